//! Environments: created per repository and category, listed grouped or filtered, in
//! orchestration order, and locked one CI job at a time through the lock queue.

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

async fn environment(app: &TestApi, token: &str, body: Value) -> Value {
    let (status, env) = send(app.post("/sfp/api/environments").bearer_auth(token).json(&body)).await;
    assert_eq!(status, 201, "{env}");
    env
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn environments_are_listed_grouped_filtered_and_in_order(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let repo = "flxbl-io/sfp";
    environment(&app, &owner, json!({"repositoryIdentifier": repo, "name": "sit", "category": "test", "orchestrationOrder": 2, "tags": ["ci"]})).await;
    environment(&app, &owner, json!({"repositoryIdentifier": repo, "name": "dev1", "category": "dev", "salesforceUsername": "dev1@example.test"})).await;
    environment(
        &app,
        &owner,
        json!({"repositoryIdentifier": repo, "name": "uat", "category": "test", "orchestrationOrder": 1}),
    )
    .await;
    environment(&app, &owner, json!({"repositoryIdentifier": repo, "name": "old", "category": "test", "isActive": false, "orchestrationOrder": 0})).await;
    environment(&app, &owner, json!({"repositoryIdentifier": "other/repo", "name": "uat", "category": "test"})).await;
    let (status, dup) = send(
        app.post("/sfp/api/environments")
            .bearer_auth(&owner)
            .json(&json!({"repositoryIdentifier": repo, "name": "uat", "category": "test"})),
    )
    .await;
    assert_eq!(status, 409, "{dup}");

    let get = |q: &str| send(app.get(&format!("/sfp/api/environments{q}")).bearer_auth(&owner));
    let names =
        |v: &Value| v.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let (_, grouped) = get(&format!("?repositoryIdentifier={repo}")).await;
    assert_eq!(names(&grouped["test"]), vec!["old", "uat", "sit"]);
    assert_eq!(names(&grouped["dev"]), vec!["dev1"]);
    assert_eq!(grouped["release"], json!([]));
    assert_eq!(grouped["dev"][0]["salesforceUsername"], "dev1@example.test");
    assert_eq!(grouped["dev"][0]["isLocked"], false);
    let (_, tests) = get(&format!("?repositoryIdentifier={repo}&category=test&isActive=true")).await;
    assert_eq!(names(&tests), vec!["uat", "sit"]);
    let (_, tagged) = get("?tags=ci").await;
    assert_eq!(names(&tagged["test"]), vec!["sit"]);
    let (_, order) = send(
        app.get(&format!("/sfp/api/environments/orchestration-order?repositoryIdentifier={repo}&category=test"))
            .bearer_auth(&owner),
    )
    .await;
    assert_eq!(names(&order), vec!["uat", "sit"], "active ones, in orchestration order");
    let (status, _) = get("?category=prod").await;
    assert_eq!(status, 400);

    // PATCH changes what it names and keeps the rest; a name taken in the repository is 409.
    let sit = grouped["test"].as_array().unwrap().iter().find(|e| e["name"] == "sit").unwrap().clone();
    let id = sit["id"].as_str().unwrap();
    let (status, patched) = send(
        app.request("PATCH", &format!("/sfp/api/environments/{id}"))
            .bearer_auth(&owner)
            .json(&json!({"category": "release", "orchestrationOrder": 9, "salesforceUsername": "sit@example.test"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!((patched["category"].as_str(), patched["orchestrationOrder"].as_i64()), (Some("release"), Some(9)));
    assert_eq!(patched["tags"], json!(["ci"]), "fields not named are kept");
    assert_eq!(patched["salesforceUsername"], "sit@example.test");
    let (status, clash) = send(
        app.request("PATCH", &format!("/sfp/api/environments/{id}")).bearer_auth(&owner).json(&json!({"name": "uat"})),
    )
    .await;
    assert_eq!(status, 409, "{clash}");
    let (status, bad) = send(
        app.request("PATCH", &format!("/sfp/api/environments/{id}"))
            .bearer_auth(&owner)
            .json(&json!({"category": "prod"})),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    let member = app.user("member@example.test", "a member password", Role::Member).await;
    let (status, _) = send(
        app.request("PATCH", &format!("/sfp/api/environments/{id}"))
            .bearer_auth(&member)
            .json(&json!({"isActive": false})),
    )
    .await;
    assert_eq!(status, 403, "members do not change environments");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn an_environment_is_leased_to_one_job_at_a_time(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let member = app.user("ci@example.test", "a ci member password", Role::Member).await;
    let env = environment(&app, &owner, json!({"repositoryIdentifier": "flxbl-io/sfp", "name": "uat", "category": "test", "salesforceUsername": "uat@example.test"})).await;
    let id = env["id"].as_str().unwrap();
    let (status, first) = send(
        app.post(&format!("/sfp/api/environments/{id}/lock"))
            .bearer_auth(&member)
            .json(&json!({"duration": 30, "reason": "PR 12"})),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "acquired");
    assert_eq!(
        (first["environmentName"].clone(), first["salesforceUsername"].clone(), first["duration"].clone()),
        (json!("uat"), json!("uat@example.test"), json!(30))
    );
    let (_, second) =
        send(app.post(&format!("/sfp/api/environments/{id}/lock")).bearer_auth(&owner).json(&json!({}))).await;
    assert_eq!((second["status"].clone(), second["queuePosition"].clone()), (json!("queued"), json!(1)));

    let (_, seen) = send(app.get(&format!("/sfp/api/environments/{id}")).bearer_auth(&member)).await;
    assert_eq!(seen["isLocked"], true);
    assert_eq!(seen["lockStatus"]["currentLock"]["ticketId"], first["ticketId"]);
    assert_eq!(seen["lockStatus"]["queuedLocks"].as_array().unwrap().len(), 1);
    let left = seen["lockExpiresInSeconds"].as_i64().unwrap();
    assert!((1790..=1800).contains(&left), "{left}");

    let ticket = first["ticketId"].as_str().unwrap();
    let (status, released) =
        send(app.request("DELETE", &format!("/sfp/api/environments/{id}/lock/{ticket}")).bearer_auth(&member)).await;
    assert_eq!((status, released["status"].clone()), (StatusCode::OK, json!("released")));
    let (_, now) = send(app.get(&format!("/sfp/api/environments/{id}")).bearer_auth(&member)).await;
    assert_eq!(now["lockStatus"]["currentLock"]["ticketId"], second["ticketId"], "the queued job holds it now");
    // The generic lock API sees the same queue.
    let (_, queue) = send(app.get("/sfp/api/locks/flxbl-io/sfp/environment:uat").bearer_auth(&owner)).await;
    assert_eq!(queue[0]["ticketId"], second["ticketId"]);

    let (status, _) =
        send(app.post(&format!("/sfp/api/environments/{id}/lock")).bearer_auth(&member).json(&json!({"duration": 0})))
            .await;
    assert_eq!(status, 400);
    let (status, _) = send(
        app.post("/sfp/api/environments")
            .bearer_auth(&member)
            .json(&json!({"repositoryIdentifier": "r", "name": "x", "category": "dev"})),
    )
    .await;
    assert_eq!(status, 403, "members do not create environments");
    let (status, _) = send(app.request("DELETE", &format!("/sfp/api/environments/{id}")).bearer_auth(&owner)).await;
    assert_eq!(status, 204);
    let (status, _) = send(app.get(&format!("/sfp/api/environments/{id}")).bearer_auth(&owner)).await;
    assert_eq!(status, 404);
}
