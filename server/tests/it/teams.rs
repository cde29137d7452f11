//! Users, teams and projects, and the row-level security under them: the project list has
//! no filter in its handler, and still nobody sees another team's projects.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sfp_server::auth::{Caller, CallerKind, Role, app_tokens};
use sqlx::PgPool;

use crate::support::*;

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn identifiers(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|p| p["identifier"].as_str().unwrap().to_owned()).collect()
}

struct World {
    app: TestApi,
    owner: String,
    alice: String,
    bob: String,
}

/// Teams alpha (alice) and beta (bob), a project in each and one with no team.
async fn world(pool: PgPool) -> World {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let alice = app.user("alice@example.test", "alice's password!", Role::Member).await;
    let bob = app.user("bob@example.test", "bob's password!!!", Role::Member).await;
    for slug in ["alpha", "beta"] {
        let (status, team) = send(app.post("/sfp/api/teams").bearer_auth(&owner).json(&json!({"name": slug}))).await;
        assert_eq!(status, 201, "{team}");
        assert_eq!(team["slug"], slug);
    }
    for (slug, email) in [("alpha", "alice@example.test"), ("beta", "bob@example.test")] {
        let (status, body) = send(
            app.post(&format!("/sfp/api/teams/{slug}/members")).bearer_auth(&owner).json(&json!({"email": email})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    for (identifier, team) in [("acme/alpha-app", Some("alpha")), ("acme/beta-app", Some("beta")), ("acme/solo", None)]
    {
        let (status, body) = send(app.post("/sfp/api/projects").bearer_auth(&owner).json(&json!({
            "identifier": identifier, "remoteUrl": format!("https://github.com/{identifier}.git"), "team": team,
        })))
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["platform"], "github");
    }
    World { app, owner, alice, bob }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn members_see_only_their_teams_projects_because_the_database_says_so(pool: PgPool) {
    let w = world(pool.clone()).await;
    let (_, all) = send(w.app.get("/sfp/api/projects").bearer_auth(&w.owner)).await;
    assert_eq!(identifiers(&all), ["acme/alpha-app", "acme/beta-app", "acme/solo"]);
    let (_, alices) = send(w.app.get("/sfp/api/projects").bearer_auth(&w.alice)).await;
    assert_eq!(identifiers(&alices), ["acme/alpha-app"]);
    let (_, bobs) = send(w.app.get("/sfp/api/projects").bearer_auth(&w.bob)).await;
    assert_eq!(identifiers(&bobs), ["acme/beta-app"]);

    let (status, project) = send(w.app.get("/sfp/api/projects/acme/alpha-app").bearer_auth(&w.alice)).await;
    assert_eq!((status, project["team"].as_str()), (StatusCode::OK, Some("alpha")));
    let (status, _) = send(w.app.get("/sfp/api/projects/acme/beta-app").bearer_auth(&w.alice)).await;
    assert_eq!(status, 404, "another team's project does not exist for alice");

    // An application token made by alice sees what alice sees, no more.
    let alice_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM auth.users WHERE email = 'alice@example.test'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (_, token) = app_tokens::create(&pool, alice_id, "alice's ci", 5).await.unwrap();
    let (_, seen) = send(w.app.get("/sfp/api/projects").bearer_auth(&token)).await;
    assert_eq!(identifiers(&seen), ["acme/alpha-app"]);

    // The same in SQL: a query that forgets every filter, under alice's claims.
    let alice = Caller {
        kind: CallerKind::User,
        user_id: alice_id,
        email: Some("alice@example.test".into()),
        role: Some(Role::Member),
        creator_role: None,
        token_id: None,
        session_id: None,
    };
    let mut tx = sfp_server::auth::rls::begin_as(&pool, &alice).await.unwrap();
    let forgetful: Vec<String> =
        sqlx::query_scalar("SELECT identifier FROM app.project").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(forgetful, ["acme/alpha-app"]);
    let wrote = sqlx::query("UPDATE app.project SET remote_url = 'https://evil.example/x.git'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(wrote.rows_affected(), 0, "a member changes no project, not even their team's");
    let insert = sqlx::query(
        "INSERT INTO app.project (id, identifier, remote_url, platform) VALUES (gen_random_uuid(), 'x/y', 'u', 'git')",
    )
    .execute(&mut *tx)
    .await;
    assert!(insert.is_err(), "a member cannot add a project without a team");
    drop(tx);
    let role: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&pool).await.unwrap();
    assert_ne!(role, "authenticated", "the role ends with the transaction");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn projects_are_created_once_and_validated(pool: PgPool) {
    let w = world(pool).await;
    let body = json!({"identifier": "acme/solo", "remoteUrl": "https://github.com/acme/solo.git"});
    let (status, error) = send(w.app.post("/sfp/api/projects").bearer_auth(&w.owner).json(&body)).await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    for (bad, status) in [
        (json!({"identifier": "has space", "remoteUrl": "u"}), StatusCode::BAD_REQUEST),
        (json!({"identifier": "/lead", "remoteUrl": "u"}), StatusCode::BAD_REQUEST),
        (json!({"identifier": "a/b"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"identifier": "a/b", "remoteUrl": "u", "team": "nope"}), StatusCode::NOT_FOUND),
        (json!({"identifier": "a/b", "remoteUrl": "u", "configuration": [1]}), StatusCode::BAD_REQUEST),
    ] {
        let (got, error) = send(w.app.post("/sfp/api/projects").bearer_auth(&w.owner).json(&bad)).await;
        assert_eq!(got, status, "{bad}: {error}");
        assert!(error["message"].is_string(), "stable body");
    }
    let (status, _) = send(w.app.post("/sfp/api/projects").bearer_auth(&w.alice).json(&body)).await;
    assert_eq!(status, 403, "members do not create projects");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn team_owners_manage_their_team_and_nobody_elses(pool: PgPool) {
    let w = world(pool).await;
    let carol = w.app.user("carol@example.test", "carol's password!", Role::Member).await;
    let (_, teams) = send(w.app.get("/sfp/api/teams").bearer_auth(&w.alice)).await;
    let slugs: Vec<&str> = teams["teams"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["alpha"]);
    let (status, _) = send(w.app.get("/sfp/api/teams/beta/members").bearer_auth(&w.alice)).await;
    assert_eq!(status, 404, "beta does not exist for alice");

    // A plain member cannot add people; the database refuses the row.
    let add = json!({"email": "carol@example.test"});
    let (status, error) = send(w.app.post("/sfp/api/teams/alpha/members").bearer_auth(&w.alice).json(&add)).await;
    assert_eq!(status, 403, "{error}");
    // Made a team owner, alice manages alpha...
    let (status, _) = send(
        w.app
            .request("PUT", "/sfp/api/teams/alpha/members/alice@example.test/role")
            .bearer_auth(&w.owner)
            .json(&json!({"role": "owner"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(w.app.post("/sfp/api/teams/alpha/members").bearer_auth(&w.alice).json(&add)).await;
    assert_eq!(status, 201);
    let (status, _) = send(w.app.post("/sfp/api/teams/alpha/members").bearer_auth(&w.alice).json(&add)).await;
    assert_eq!(status, 409, "already a member");
    let (status, listed) = send(w.app.get("/sfp/api/teams/alpha/members").bearer_auth(&w.alice)).await;
    assert_eq!(status, 200, "{listed}");
    let members: Vec<(&str, &str)> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(members, [("alice@example.test", "owner"), ("carol@example.test", "member")]);
    let (_, carols) = send(w.app.get("/sfp/api/projects").bearer_auth(&carol)).await;
    assert_eq!(identifiers(&carols), ["acme/alpha-app"], "carol now sees alpha's project");
    // ...but not beta.
    let (status, _) = send(w.app.post("/sfp/api/teams/beta/members").bearer_auth(&w.alice).json(&add)).await;
    assert_eq!(status, 404);
    let (status, _) =
        send(w.app.request("DELETE", "/sfp/api/teams/alpha/members/carol@example.test").bearer_auth(&w.alice)).await;
    assert_eq!(status, 204);
    let (_, carols) = send(w.app.get("/sfp/api/projects").bearer_auth(&carol)).await;
    assert_eq!(identifiers(&carols), Vec::<String>::new());
    let (status, _) = send(w.app.post("/sfp/api/teams").bearer_auth(&w.owner).json(&json!({"name": "alpha"}))).await;
    assert_eq!(status, 409);
    let (status, _) =
        send(w.app.post("/sfp/api/teams").bearer_auth(&w.owner).json(&json!({"name": "x", "slug": "Bad Slug"}))).await;
    assert_eq!(status, 400);
    let (status, _) = send(w.app.request("DELETE", "/sfp/api/teams/beta").bearer_auth(&w.owner)).await;
    assert_eq!(status, 204);
    let (_, bobs) = send(w.app.get("/sfp/api/projects").bearer_auth(&w.bob)).await;
    assert_eq!(identifiers(&bobs), Vec::<String>::new(), "beta's project went back to the owners");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn owners_manage_users_and_the_last_owner_stays(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let new = json!({"email": "dave@example.test", "password": "dave's long password", "role": "member"});
    let (status, dave) = send(app.post("/sfp/api/users").bearer_auth(&owner).json(&new)).await;
    assert_eq!(status, 201, "{dave}");
    assert_eq!(dave["role"], "member");
    let (status, _) = send(app.post("/sfp/api/users").bearer_auth(&owner).json(&new)).await;
    assert_eq!(status, 409);
    for (bad, status, code) in [
        (json!({"email": "not-an-address", "role": "member"}), StatusCode::BAD_REQUEST, "validation_failed"),
        (json!({"email": "e@example.test", "role": "emperor"}), StatusCode::BAD_REQUEST, "validation_failed"),
        (
            json!({"email": "e@example.test", "role": "member", "password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (json!({"email": "e@example.test"}), StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
    ] {
        let (got, error) = send(app.post("/sfp/api/users").bearer_auth(&owner).json(&bad)).await;
        assert_eq!((got, error["code"].as_str()), (status, Some(code)), "{bad}");
    }
    let dave_token =
        app.login("dave@example.test", "dave's long password").await["access_token"].as_str().unwrap().to_owned();
    let (_, listed) = send(app.get("/sfp/api/users").bearer_auth(&owner)).await;
    assert_eq!(listed["users"].as_array().unwrap().len(), 2);
    let (status, _) = send(app.get("/sfp/api/users").bearer_auth(&dave_token)).await;
    assert_eq!(status, 403);

    // The only owner cannot be demoted; with a second owner, one can.
    let (status, error) = send(
        app.request("PUT", &format!("/sfp/api/users/{ADMIN_EMAIL}"))
            .bearer_auth(&owner)
            .json(&json!({"role": "member"})),
    )
    .await;
    assert_eq!((status, error["code"].as_str()), (StatusCode::CONFLICT, Some("last_owner")));
    let (status, promoted) = send(
        app.request("PUT", "/sfp/api/users/dave@example.test").bearer_auth(&owner).json(&json!({"role": "owner"})),
    )
    .await;
    assert_eq!((status, promoted["role"].as_str()), (StatusCode::OK, Some("owner")));
    let (status, _) = send(app.get("/sfp/api/users").bearer_auth(&dave_token)).await;
    assert_eq!(status, 200, "the new role applies at once, with the same token");

    let (status, _) =
        send(app.request("DELETE", "/sfp/api/users").bearer_auth(&owner).json(&json!({"email": ADMIN_EMAIL}))).await;
    assert_eq!(status, 409, "nobody deletes themselves");
    let (status, _) =
        send(app.request("DELETE", "/sfp/api/users").bearer_auth(&owner).json(&json!({"email": "dave@example.test"})))
            .await;
    assert_eq!(status, 200);
    let (status, _) = send(app.get("/sfp/api/users/me").bearer_auth(&dave_token)).await;
    assert_eq!(status, 401, "a deleted user's token stops working");
    let (status, _) = send(app.get("/sfp/api/users/dave@example.test").bearer_auth(&owner)).await;
    assert_eq!(status, 404);
}
