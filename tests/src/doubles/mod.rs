//! Local stand-ins for the services tests cannot reach, speaking their real wire formats:
//! Salesforce (OAuth token, userinfo, REST query, limits, sandbox auth, revoke) and GitHub
//! (App installation tokens). The product reaches them only through its configurable base
//! URLs (`salesforce.base_url`, `github.api_url`).

pub mod github;
pub mod salesforce;

use rand::Rng;
use rand::distr::Alphanumeric;

/// Random token text with a recognisable prefix, so a grep of logs finds any leak. The
/// prefixes the stand-ins use are listed in `tests/leak-markers.txt`, which scripts/test
/// searches everything the test run wrote for.
pub fn token(prefix: &str, len: usize) -> String {
    let tail: String = rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect();
    format!("{prefix}{tail}")
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for a test double");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    (listener, url)
}

fn serve(listener: tokio::net::TcpListener, router: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
}
