//! Environment locks as `auth-environment-with-lock` uses them: the holder of an acquired
//! ticket gets a fresh access token of the environment's org (owners and applications only,
//! audited, never shown to anyone else); `wait` holds the request until the ticket is
//! acquired; a wait that ends without an answer withdraws its ticket.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sfp_server::auth::Role;
use sfp_tests::doubles::salesforce::{Org, Salesforce};
use sqlx::PgPool;

use crate::support::*;

const REPO: &str = "flxbl-io/sfp";

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

struct Setup {
    app: TestApi,
    sf: Salesforce,
    owner: String,
    member: String,
    application: String,
}

/// The API with a Salesforce stand-in holding the org `uat@acme.test`, registered by the owner.
async fn setup(pool: PgPool) -> Setup {
    setup_with(pool, sfp_server::config::Config::default()).await
}

async fn setup_with(pool: PgPool, mut config: sfp_server::config::Config) -> Setup {
    let org = Org::new("uat@acme.test", true);
    let sf = Salesforce::start(vec![org.clone()]).await;
    config.salesforce.base_url = Some(sf.url.clone());
    let app = TestApi::spawn_full(pool, config).await;
    let owner = app.admin_token().await;
    let member = app.user("ci@example.test", "a ci member password", Role::Member).await;
    let application = app.application_token(&owner, 30).await["token"].as_str().unwrap().to_string();
    let (status, body) = send(
        app.post("/sfp/api/auth/salesforce/register").bearer_auth(&owner).json(&json!({"sfdxAuthUrl": org.auth_url()})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    Setup { app, sf, owner, member, application }
}

impl Setup {
    async fn environment(&self, name: &str, username: Option<&str>) -> String {
        let body =
            json!({"repositoryIdentifier": REPO, "name": name, "category": "test", "salesforceUsername": username});
        let (status, env) = send(self.app.post("/sfp/api/environments").bearer_auth(&self.owner).json(&body)).await;
        assert_eq!(status, 201, "{env}");
        env["id"].as_str().unwrap().to_string()
    }

    fn lock(&self, env: &str, token: &str, body: Value) -> reqwest::RequestBuilder {
        self.app.post(&format!("/sfp/api/environments/{env}/lock")).bearer_auth(token).json(&body)
    }

    async fn ticket(&self, env: &str, ticket: &Value, token: &str) -> Value {
        let ticket = ticket.as_str().unwrap();
        let (status, body) =
            send(self.app.get(&format!("/sfp/api/environments/{env}/lock/{ticket}")).bearer_auth(token)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn unlock(&self, env: &str, ticket: &Value, token: &str) {
        let ticket = ticket.as_str().unwrap();
        let path = format!("/sfp/api/environments/{env}/lock/{ticket}");
        let (status, body) = send(self.app.request("DELETE", &path).bearer_auth(token)).await;
        assert_eq!(status, 200, "{body}");
    }

    /// The live tickets of the environment `name`, holder first.
    async fn queue(&self, name: &str) -> Vec<Value> {
        let (_, queue) =
            send(self.app.get(&format!("/sfp/api/locks/{REPO}/environment:{name}")).bearer_auth(&self.owner)).await;
        queue.as_array().unwrap().clone()
    }

    /// Waits until the environment's queue has `n` live tickets.
    async fn queue_reaches(&self, name: &str, n: usize) -> Vec<Value> {
        for _ in 0..500 {
            let queue = self.queue(name).await;
            if queue.len() == n {
                return queue;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the queue of {name} never had {n} tickets: {:?}", self.queue(name).await);
    }

    /// Asserts that `token` is an access token the stand-in granted for `uat@acme.test`.
    fn assert_granted(&self, token: &Value) {
        let token = token.as_str().unwrap_or_else(|| panic!("no access token: {token}"));
        assert_eq!(self.sf.sessions().get(token).map(String::as_str), Some("uat@acme.test"));
    }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_holder_of_an_acquired_lock_gets_fresh_credentials_and_nobody_else_does(pool: PgPool) {
    let s = setup(pool.clone()).await;
    let uat = s.environment("uat", Some("uat@acme.test")).await;

    // An application token locks: acquired, with a fresh access token of the org.
    let (status, first) = send(s.lock(&uat, &s.application, json!({"duration": 30, "reason": "PR 7"}))).await;
    assert_eq!((status, first["status"].as_str()), (StatusCode::CREATED, Some("acquired")), "{first}");
    s.assert_granted(&first["accessToken"]);
    assert_eq!(first["instanceUrl"], json!(s.sf.url));
    assert_eq!((first["salesforceUsername"].as_str(), first["duration"].as_i64()), (Some("uat@acme.test"), Some(30)));
    assert!(first.get("authError").is_none(), "{first}");
    // Polling its own ticket gives a fresh token again.
    let polled = s.ticket(&uat, &first["ticketId"], &s.application).await;
    s.assert_granted(&polled["accessToken"]);
    assert_ne!(polled["accessToken"], first["accessToken"]);

    // A member queues behind it: no credentials while queued, and none once acquired either.
    let (_, second) = send(s.lock(&uat, &s.member, json!({}))).await;
    assert_eq!((second["status"].as_str(), second["queuePosition"].as_i64()), (Some("queued"), Some(1)));
    assert!(second.get("accessToken").is_none() && second.get("authError").is_none(), "{second}");
    // Someone else's acquired ticket: the state, never the credentials.
    for token in [&s.member, &s.owner] {
        let seen = s.ticket(&uat, &first["ticketId"], token).await;
        assert_eq!(seen["status"], "acquired");
        assert!(seen.get("accessToken").is_none() && seen.get("authError").is_none(), "{seen}");
    }
    s.unlock(&uat, &first["ticketId"], &s.application).await;
    let turn = s.ticket(&uat, &second["ticketId"], &s.member).await;
    assert_eq!(turn["status"], "acquired");
    assert!(turn.get("accessToken").is_none(), "{turn}");
    assert_eq!(turn["authError"]["code"], "forbidden", "{turn}");
    assert!(turn["authError"]["message"].as_str().unwrap().contains("owner, application"));
    s.unlock(&uat, &second["ticketId"], &s.member).await;

    // The environment itself never shows a token.
    let (_, env) = send(s.app.get(&format!("/sfp/api/environments/{uat}")).bearer_auth(&s.owner)).await;
    for token in s.sf.sessions().keys() {
        assert!(!env.to_string().contains(token.as_str()), "{env}");
    }

    // Every grant is audited: two for the application (lock, poll), none for the member.
    let grants: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor_kind, purpose, outcome FROM vault.access_log WHERE subject = 'salesforce_org:uat@acme.test' \
         AND purpose = 'environment-lock' ORDER BY at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let application = ("application".to_string(), "environment-lock".to_string(), "granted".to_string());
    assert_eq!(grants, vec![application.clone(), application]);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn an_acquired_lock_without_credentials_says_why_and_stays_locked(pool: PgPool) {
    let s = setup(pool).await;
    let cases =
        [("nouser", None, "no_salesforce_username"), ("unregistered", Some("nobody@acme.test"), "org_not_registered")];
    for (name, username, code) in cases {
        let env = s.environment(name, username).await;
        let (status, answer) = send(s.lock(&env, &s.owner, json!({"duration": 5}))).await;
        assert_eq!((status, answer["status"].as_str()), (StatusCode::CREATED, Some("acquired")), "{answer}");
        assert_eq!(answer["authError"]["code"], code, "{answer}");
        assert!(answer.get("accessToken").is_none());
        assert_eq!(s.queue(name).await[0]["ticketId"], answer["ticketId"], "the lock stands");
    }
    // Salesforce refuses the refresh token (the org's session was revoked there): the lock
    // stands, and the answer says Salesforce did not grant a session.
    let uat = s.environment("uat", Some("uat@acme.test")).await;
    s.sf.remove_org("uat@acme.test");
    let (_, answer) = send(s.lock(&uat, &s.owner, json!({}))).await;
    assert_eq!(
        (answer["status"].as_str(), answer["authError"]["code"].as_str()),
        (Some("acquired"), Some("salesforce_unavailable"))
    );
    assert!(answer["authError"]["message"].as_str().unwrap().contains("invalid_grant"), "{answer}");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_waiting_lock_request_answers_with_credentials_when_its_turn_comes(pool: PgPool) {
    // Waiting outlives the API's request deadline (1 s here): the wait has its own bound.
    let mut config = sfp_server::config::Config::default();
    config.api.request_timeout_secs = 1;
    let s = setup_with(pool.clone(), config).await;
    let uat = s.environment("uat", Some("uat@acme.test")).await;
    let (_, held) = send(s.lock(&uat, &s.owner, json!({"duration": 10}))).await;

    // Released by its holder: the waiter is woken and answers acquired, with credentials.
    let waiting = tokio::spawn(send(s.lock(&uat, &s.application, json!({"wait": true, "reason": "deploy"}))));
    let queue = s.queue_reaches("uat", 2).await;
    assert_eq!(queue[1]["status"], "queued");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "the request answered while its ticket was queued");
    assert_eq!(s.queue("uat").await.len(), 2, "the waiting ticket is still queued past the request deadline");
    s.unlock(&uat, &held["ticketId"], &s.owner).await;
    let (status, answer) = waiting.await.unwrap();
    assert_eq!((status, answer["status"].as_str()), (StatusCode::CREATED, Some("acquired")), "{answer}");
    assert_eq!(answer["ticketId"], queue[1]["ticketId"]);
    s.assert_granted(&answer["accessToken"]);
    s.unlock(&uat, &answer["ticketId"], &s.application).await;

    // A lease that runs out: nobody writes, and the waiter still gets its turn.
    let (_, held) = send(s.lock(&uat, &s.owner, json!({"duration": 10}))).await;
    let waiting = tokio::spawn(send(s.lock(&uat, &s.application, json!({"wait": true}))));
    s.queue_reaches("uat", 2).await;
    sqlx::query(
        "UPDATE app.lock_ticket SET lease_expires_at = now() + interval '300 milliseconds' WHERE id = $1::uuid",
    )
    .bind(held["ticketId"].as_str().unwrap())
    .execute(&pool)
    .await
    .unwrap();
    let (status, answer) = waiting.await.unwrap();
    assert_eq!((status, answer["status"].as_str()), (StatusCode::CREATED, Some("acquired")), "{answer}");
    s.assert_granted(&answer["accessToken"]);
    let expired = s.ticket(&uat, &held["ticketId"], &s.owner).await;
    assert_eq!(expired["status"], "expired");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_waiter_on_one_server_is_woken_by_a_release_on_another(pool: PgPool) {
    // Waiters look again only once an hour here: only the change notification can wake them.
    let mut config = sfp_server::config::Config::default();
    config.api.lock_wait_recheck_secs = 3600;
    let s = setup_with(pool.clone(), config.clone()).await;
    config.salesforce.base_url = Some(s.sf.url.clone());
    let other = TestApi::spawn_full(pool.clone(), config).await;
    let uat = s.environment("uat", Some("uat@acme.test")).await;
    let (_, held) = send(s.lock(&uat, &s.owner, json!({"duration": 10}))).await;
    assert_eq!(held["status"], "acquired");

    let path = format!("/sfp/api/environments/{uat}/lock");
    let wait = other.post(&path).bearer_auth(&s.application).json(&json!({"wait": true, "reason": "deploy"}));
    let waiting = tokio::spawn(send(wait));
    let queue = s.queue_reaches("uat", 2).await;
    assert_eq!(queue[1]["status"], "queued");
    s.unlock(&uat, &held["ticketId"], &s.owner).await;
    // A generous bound only against hanging for the hour: the answer comes at the release.
    let (status, answer) = tokio::time::timeout(Duration::from_secs(120), waiting)
        .await
        .expect("the waiter on the other server was never woken by the release")
        .unwrap();
    assert_eq!((status, answer["status"].as_str()), (StatusCode::CREATED, Some("acquired")), "{answer}");
    assert_eq!(answer["ticketId"], queue[1]["ticketId"]);
    s.assert_granted(&answer["accessToken"]);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_wait_that_ends_without_an_answer_withdraws_its_ticket(pool: PgPool) {
    let s = setup(pool.clone()).await;
    let uat = s.environment("uat", Some("uat@acme.test")).await;
    let (_, _held) = send(s.lock(&uat, &s.owner, json!({"duration": 10}))).await;

    // The wait times out: 409, and the ticket is gone from the queue.
    let (status, body) = send(s.lock(&uat, &s.application, json!({"wait": true, "waitTimeoutSeconds": 1}))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("lock_wait_timeout")), "{body}");
    assert_eq!(s.queue("uat").await.len(), 1, "the timed-out ticket left the queue");

    // The client hangs up while waiting: its ticket is withdrawn, so it never takes a turn.
    let hung_up = s.lock(&uat, &s.application, json!({"wait": true})).timeout(Duration::from_secs(60));
    let waiting = tokio::spawn(hung_up.send());
    let queue = s.queue_reaches("uat", 2).await;
    waiting.abort();
    s.queue_reaches("uat", 1).await;
    let withdrawn = s.ticket(&uat, &queue[1]["ticketId"], &s.owner).await;
    assert_eq!(withdrawn["status"], "released", "{withdrawn}");

    // An owner releases the waiting ticket: the request answers 409, not a released ticket.
    let waiting = tokio::spawn(send(s.lock(&uat, &s.application, json!({"wait": true}))));
    let queue = s.queue_reaches("uat", 2).await;
    s.unlock(&uat, &queue[1]["ticketId"], &s.owner).await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("lock_request_released")), "{body}");

    // The server stops while a request waits: 503, and the ticket is withdrawn.
    let waiting = tokio::spawn(send(s.lock(&uat, &s.application, json!({"wait": true}))));
    let queue = s.queue_reaches("uat", 2).await;
    s.app.shutdown.cancel();
    let (status, body) = waiting.await.unwrap();
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")), "{body}");
    let status: String = sqlx::query_scalar("SELECT status FROM app.lock_ticket WHERE id = $1::uuid")
        .bind(queue[1]["ticketId"].as_str().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "released");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn bad_lock_requests_are_refused(pool: PgPool) {
    let s = setup(pool).await;
    let uat = s.environment("uat", Some("uat@acme.test")).await;
    for (body, expected) in [
        (json!({"duration": 0}), StatusCode::BAD_REQUEST),
        (json!({"wait": true, "waitTimeout": 5, "waitTimeoutSeconds": 300}), StatusCode::BAD_REQUEST),
        (json!({"waitTimeoutSeconds": 0}), StatusCode::BAD_REQUEST),
        (json!({"wait": "yes"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"wiat": true}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, answer) = send(s.lock(&uat, &s.owner, body.clone())).await;
        assert_eq!(status, expected, "{body} -> {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    assert!(s.queue("uat").await.is_empty(), "a refused request leaves no ticket");
    let path = format!("/sfp/api/environments/{uat}/lock/not-a-uuid");
    let (status, _) = send(s.app.get(&path).bearer_auth(&s.owner)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let path = format!("/sfp/api/environments/{uat}/lock/{}", uuid::Uuid::new_v4());
    let (status, _) = send(s.app.get(&path).bearer_auth(&s.owner)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
