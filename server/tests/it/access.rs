//! The role matrix: every route in the access table, called by every kind of caller, answers
//! as the table says (401 without credentials, 403 naming the roles, anything else when
//! allowed), and every route in the table exists.

use reqwest::StatusCode;
use serde_json::json;
use sfp_server::auth::access::{Access, RULES};
use sfp_server::auth::{Role, app_tokens};
use sqlx::PgPool;

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Anonymous,
    Owner,
    Member,
    NoRole,
    OwnersApplication,
    MembersApplication,
}

fn expected_allowed(access: Access, who: Who) -> Option<bool> {
    // None: 401 expected (no credentials); Some(allowed)
    match (access, who) {
        (Access::Public, _) => Some(true),
        // Users' and application tokens never open the worker routes.
        (Access::Worker | Access::StepToken, _) => None,
        (_, Who::Anonymous) => None,
        (Access::SignedIn, _) => Some(true),
        (Access::Roles(roles), Who::Owner) => Some(roles.contains(&Role::Owner)),
        (Access::Roles(roles), Who::Member) => Some(roles.contains(&Role::Member)),
        (Access::Roles(_), Who::NoRole) => Some(false),
        (Access::Roles(roles), Who::OwnersApplication) => Some(roles.contains(&Role::Application)),
        (Access::Roles(roles), Who::MembersApplication) => {
            Some(roles.contains(&Role::Application) && roles.contains(&Role::Member))
        }
    }
}

/// The route with a made-up value for each of its parameters.
fn fill_params(route: &str) -> String {
    route
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                format!("x{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            } else {
                segment.into()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn every_route_answers_every_role_as_the_access_table_says(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let member = app.user("member@example.test", "member password 1", Role::Member).await;
    // A signed-in user without a role on this instance (e.g. made by an external GoTrue).
    let no_role = app.user("norole@example.test", "no role password", Role::Member).await;
    sqlx::query(
        "DELETE FROM app.user_role WHERE user_id = (SELECT id FROM auth.users WHERE email = 'norole@example.test')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let owners_app = app.application_token(&owner, 30).await["token"].as_str().unwrap().to_owned();
    let member_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM auth.users WHERE email = 'member@example.test'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (_, members_app) = app_tokens::create(&pool, member_id, "member's", 30).await.unwrap();

    let callers = [
        (Who::Anonymous, None),
        (Who::Owner, Some(owner.clone())),
        (Who::Member, Some(member)),
        (Who::NoRole, Some(no_role)),
        (Who::OwnersApplication, Some(owners_app)),
        (Who::MembersApplication, Some(members_app)),
    ];
    let mut checked = 0;
    for rule in RULES {
        let path = format!("/sfp/api{}", fill_params(rule.path));
        for (who, token) in &callers {
            let mut request = app.request(rule.method, &path);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            if rule.method != "GET" && rule.method != "DELETE" {
                request = request.json(&json!({}));
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let what = format!("{} {} as {who:?}", rule.method, path);
            let body = response.text().await.unwrap();
            assert!(!body.contains("no route for"), "{what}: the route in the table exists: {body}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
            match expected_allowed(rule.access, *who) {
                None => assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}"),
                Some(true) => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{what}: allowed by the table, got {status}: {body}"
                    );
                }
                Some(false) => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
                    let Access::Roles(roles) = rule.access else { unreachable!() };
                    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(error["code"], "forbidden");
                    assert_eq!(error["message"], format!("Forbidden - Requires role: {}", names.join(", ")), "{what}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, RULES.len() * callers.len());
}

#[test]
fn the_access_table_has_one_rule_per_route() {
    let mut seen = std::collections::HashSet::new();
    for rule in RULES {
        assert!(seen.insert((rule.method, rule.path)), "two rules for {} {}", rule.method, rule.path);
        assert!(["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&rule.method), "{}", rule.method);
    }
}

/// The claims reach PostgreSQL intact whatever the e-mail address holds: quotes, the
/// dollar-quote tag of the one-round-trip BEGIN, backslashes.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn claims_with_quotes_and_dollar_tags_arrive_intact(pool: sqlx::PgPool) {
    for email in
        ["o'brien@example.com", "x$sfp_claims$y@example.com", "back\\slash'; DROP TABLE app.task; --@example.com"]
    {
        let caller = sfp_server::auth::Caller {
            kind: sfp_server::auth::CallerKind::User,
            user_id: uuid::Uuid::new_v4(),
            email: Some(email.to_string()),
            role: Some(sfp_server::auth::Role::Member),
            creator_role: None,
            token_id: None,
            session_id: None,
        };
        let mut tx = sfp_server::auth::rls::begin_as(&pool, &caller).await.unwrap();
        let (role, got): (String, String) =
            sqlx::query_as("SELECT current_setting('role'), current_setting('request.jwt.claims')::jsonb ->> 'email'")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!((role.as_str(), got.as_str()), ("authenticated", email));
        tx.rollback().await.unwrap();
    }
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM app.task").fetch_one(&pool).await.unwrap();
    assert_eq!(tasks, 0, "the table is still there");
}
