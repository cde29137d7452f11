//! Listening to a PostgreSQL notification channel for as long as the server runs: the
//! connection is opened again (with a growing pause, up to 10 s) whenever it is lost or
//! cannot be opened, and the listener says when it starts and stops hearing, since
//! notifications sent in between are lost for good.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// What a listener hears.
pub enum Heard<'a> {
    /// Listening from now on (after a start or a reconnection); what was sent before is unknown.
    Listening,
    /// A notification's payload.
    Notification(&'a str),
    /// The connection was lost: nothing is heard until the next [`Heard::Listening`].
    Deaf,
}

/// Listens on `channel` until `shutdown`, telling `on` what it hears; `what` names the
/// listener in the warnings about a failed connection.
pub async fn listen(
    pool: PgPool,
    channel: &str,
    what: &str,
    shutdown: CancellationToken,
    mut on: impl FnMut(Heard<'_>),
) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(channel).await {
                Ok(()) => {
                    on(Heard::Listening);
                    backoff = Duration::from_millis(200);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            message = listener.try_recv() => match message {
                                Ok(Some(n)) => on(Heard::Notification(n.payload())),
                                // The connection was lost (and notifications with it).
                                Ok(None) | Err(_) => break,
                            },
                        }
                    }
                    on(Heard::Deaf);
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for {what}"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot listen for {what}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
