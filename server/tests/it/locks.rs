//! Locks: FIFO tickets per resource, leases that expire, release rights, one holder even with
//! two server instances on one database, state across a restart, change notifications.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sfp_server::auth::Role;
use sqlx::PgPool;

use crate::support::*;

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn lock(app: &TestApi, token: &str, resource: &str, lease: i64) -> Value {
    let body = json!({"repository": "flxbl-io/sfp", "resource": resource, "leaseDurationSeconds": lease});
    let (status, ticket) = send(app.post("/sfp/api/locks").bearer_auth(token).json(&body)).await;
    assert_eq!(status, 201, "{ticket}");
    ticket
}

fn path(ticket: &Value) -> String {
    format!(
        "/sfp/api/locks/flxbl-io/sfp/{}/{}",
        ticket["resource"].as_str().unwrap(),
        ticket["ticketId"].as_str().unwrap()
    )
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn tickets_queue_first_in_first_out_and_the_next_acquires_on_release(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let a = lock(&app, &owner, "uat", 600).await;
    assert_eq!((a["status"].clone(), a["queuePosition"].clone()), (json!("acquired"), json!(0)));
    assert!(a["leaseExpiresAt"].is_string());
    let b = lock(&app, &owner, "uat", 600).await;
    let c = lock(&app, &owner, "uat", 600).await;
    assert_eq!((b["status"].clone(), b["queuePosition"].clone()), (json!("queued"), json!(1)));
    assert_eq!(c["queuePosition"], 2);
    let other = lock(&app, &owner, "sit", 600).await;
    assert_eq!(other["status"], "acquired", "another resource is another queue");

    let (status, released) = send(app.request("DELETE", &path(&a)).bearer_auth(&owner)).await;
    assert_eq!((status, released["status"].clone()), (StatusCode::OK, json!("released")));
    let (_, b_now) = send(app.get(&path(&b)).bearer_auth(&owner)).await;
    assert_eq!(b_now["status"], "acquired", "the next ticket acquires at once");
    let (_, c_now) = send(app.get(&path(&c)).bearer_auth(&owner)).await;
    assert_eq!((c_now["status"].clone(), c_now["queuePosition"].clone()), (json!("queued"), json!(1)));
    let (_, all) = send(app.get("/sfp/api/locks/flxbl-io/sfp/uat").bearer_auth(&owner)).await;
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|t| t["ticketId"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![b["ticketId"].as_str().unwrap(), c["ticketId"].as_str().unwrap()], "holder, then the queue");
    // The repository may also come URL-encoded.
    let (status, encoded) = send(app.get("/sfp/api/locks/flxbl-io%2Fsfp/uat").bearer_auth(&owner)).await;
    assert_eq!((status, encoded.as_array().map(Vec::len)), (StatusCode::OK, Some(2)));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn an_expired_lease_lets_the_next_ticket_acquire(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let first = lock(&app, &owner, "pool", 1).await;
    let second = lock(&app, &owner, "pool", 60).await;
    assert_eq!(second["status"], "queued");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (_, now) = send(app.get(&path(&second)).bearer_auth(&owner)).await;
    assert_eq!(now["status"], "acquired");
    let (_, old) = send(app.get(&path(&first)).bearer_auth(&owner)).await;
    assert_eq!(old["status"], "expired");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn only_the_holder_an_owner_or_an_application_releases(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let alice = app.user("alice@example.test", "alice's password!", Role::Member).await;
    let bob = app.user("bob@example.test", "bob's password!!!", Role::Member).await;
    let held = lock(&app, &alice, "dev1", 600).await;
    let (status, err) = send(app.request("DELETE", &path(&held)).bearer_auth(&bob)).await;
    assert_eq!(status, 403, "{err}");
    let (status, _) = send(app.request("DELETE", &path(&held)).bearer_auth(&alice)).await;
    assert_eq!(status, 200, "the holder releases");
    let again = lock(&app, &bob, "dev1", 600).await;
    let (status, _) = send(app.request("DELETE", &path(&again)).bearer_auth(&owner)).await;
    assert_eq!(status, 200, "an owner releases anyone's");
    let (status, _) =
        send(app.post("/sfp/api/locks").json(&json!({"repository": "r", "resource": "x", "leaseDurationSeconds": 5})))
            .await;
    assert_eq!(status, 401);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn two_servers_on_one_database_never_grant_a_resource_twice_and_state_survives_a_restart(pool: PgPool) {
    let first = TestApi::spawn(pool.clone()).await;
    let second = TestApi::spawn(pool.clone()).await;
    let owner = first.admin_token().await;
    let mut requests = Vec::new();
    for i in 0..20 {
        let url = if i % 2 == 0 { first.url.clone() } else { second.url.clone() };
        let token = owner.clone();
        requests.push(tokio::spawn(async move {
            let body = json!({"repository": "flxbl-io/sfp", "resource": "release-org", "leaseDurationSeconds": 600});
            let response = reqwest::Client::new()
                .post(format!("{url}/sfp/api/locks"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()
        }));
    }
    let mut tickets = Vec::new();
    for r in requests {
        tickets.push(r.await.unwrap());
    }
    let acquired = tickets.iter().filter(|t| t["status"] == "acquired").count();
    assert_eq!(acquired, 1, "one holder among 20 requests to two servers");
    let mut positions: Vec<i64> = tickets.iter().map(|t| t["queuePosition"].as_i64().unwrap()).collect();
    positions.sort();
    assert_eq!(positions, (0..20).collect::<Vec<_>>(), "every ticket has its own place");

    // Release one by one through alternating servers: always exactly one holder.
    let holders = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM app.lock_ticket WHERE status = 'acquired'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    for round in 0..5 {
        let app = if round % 2 == 0 { &first } else { &second };
        let (_, queue) = send(app.get("/sfp/api/locks/flxbl-io/sfp/release-org").bearer_auth(&owner)).await;
        let holder = &queue.as_array().unwrap()[0];
        assert_eq!(holder["status"], "acquired");
        let (status, _) = send(app.request("DELETE", &path(holder)).bearer_auth(&owner)).await;
        assert_eq!(status, 200);
        assert_eq!(holders().await, 1, "round {round}");
    }
    let (_, queue) = send(first.get("/sfp/api/locks/flxbl-io/sfp/release-org").bearer_auth(&owner)).await;
    let holder_id = queue[0]["ticketId"].clone();
    drop(first);
    drop(second);
    let restarted = TestApi::spawn(pool.clone()).await;
    let (_, after) = send(restarted.get("/sfp/api/locks/flxbl-io/sfp/release-org").bearer_auth(&owner)).await;
    assert_eq!(after[0]["ticketId"], holder_id, "the holder is the same after a restart");
    assert_eq!(after.as_array().unwrap().len(), 15);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn changes_are_announced_and_bad_requests_refused(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen("sfp_locks").await.unwrap();
    let ticket = lock(&app, &owner, "notify", 60).await;
    let heard = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let n = listener.recv().await.unwrap();
            let payload: Value = serde_json::from_str(n.payload()).unwrap();
            if payload["ticketId"] == ticket["ticketId"] && payload["status"] == "acquired" {
                return payload;
            }
        }
    })
    .await
    .expect("a notification");
    assert_eq!(heard["resource"], "notify");

    let post = |body: Value| send(app.post("/sfp/api/locks").bearer_auth(&owner).json(&body));
    let (status, err) = post(json!({"repository": "r", "resource": "x", "leaseDurationSeconds": 0})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap().contains("leaseDurationSeconds"));
    let (status, _) = post(json!({"repository": "", "resource": "x", "leaseDurationSeconds": 5})).await;
    assert_eq!(status, 400);
    let (status, _) = post(json!({"repository": "r", "leaseDurationSeconds": 5})).await;
    assert_eq!(status, 422);
    let (status, _) = send(app.request("DELETE", "/sfp/api/locks/r/x").bearer_auth(&owner)).await;
    assert_eq!(status, 400, "a release names its ticket");
    let unknown = uuid::Uuid::new_v4();
    let (status, _) = send(app.get(&format!("/sfp/api/locks/r/x/{unknown}")).bearer_auth(&owner)).await;
    assert_eq!(status, 404);
}
