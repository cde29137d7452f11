//! The OpenAPI document: generated from the handlers' annotations, served at
//! `/sfp/apidocs-json`, committed as `server/openapi.json` (a change to the API that is not
//! regenerated fails here), and in step with the access table: a route without a rule, or a
//! rule without a route, fails.

use std::collections::BTreeSet;

use serde_json::Value;
use sfp_server::auth::access::RULES;
use sqlx::PgPool;

use crate::support::TestApi;

const REGENERATE: &str = "cargo run -q -p sfp-server -- openapi > server/openapi.json";

fn generated() -> Value {
    serde_json::from_str(&sfp_server::api::openapi().to_pretty_json().unwrap()).unwrap()
}

#[test]
fn the_committed_document_matches_the_code() {
    let committed: Value =
        serde_json::from_str(include_str!("../../openapi.json")).expect("server/openapi.json is JSON");
    assert!(committed == generated(), "server/openapi.json is out of date; regenerate it with `{REGENERATE}`");
}

#[test]
fn every_documented_route_has_an_access_rule_and_every_rule_a_route() {
    let doc = generated();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let relative = path.strip_prefix("/sfp/api").expect("every path is under /sfp/api");
            documented.insert((method.to_uppercase(), relative.to_owned()));
        }
    }
    // The access table names routes as axum does (`{*x}` for a catch-all); OpenAPI as `{x}`.
    let ruled: BTreeSet<(String, String)> =
        RULES.iter().map(|r| (r.method.to_owned(), r.path.replace("{*", "{"))).collect();
    let unruled: Vec<_> = documented.difference(&ruled).collect();
    assert!(unruled.is_empty(), "routes without an access rule: {unruled:?}");
    let undocumented: Vec<_> = ruled.difference(&documented).collect();
    assert!(undocumented.is_empty(), "access rules of routes that are not in the API: {undocumented:?}");
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method}: responses documented"
            );
        }
    }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_document_is_served(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let response = app.get("/sfp/apidocs-json").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, generated());
    assert_eq!(served["info"]["title"], "sfp-server");
}
