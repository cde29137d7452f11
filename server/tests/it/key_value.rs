//! The key-value store: sfp server's documented calls, versions and compare-and-set, atomic
//! increments under many parallel clients, TTLs, tags and prefixes, roles, and bad input.

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

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn documented_calls_create_upsert_get_put_delete(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let kv = |m: &str, p: &str| app.request(m, &format!("/sfp/api/key-value{p}")).bearer_auth(&owner);

    let (status, created) = send(kv("POST", "").json(&json!({"key": "release/next", "value": {"name": "r42"}}))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["version"], 1);
    let (status, again) = send(kv("POST", "").json(&json!({"key": "release/next", "value": 1}))).await;
    assert_eq!(status, 409, "create never overwrites: {again}");
    assert_eq!(again["code"], "conflict");

    let (status, got) = send(kv("GET", "/release/next")).await;
    assert_eq!((status, got["value"].clone()), (StatusCode::OK, json!({"name": "r42"})));
    let (status, upserted) = send(kv("POST", "/upsert").json(&json!({"key": "release/next", "value": "r43"}))).await;
    assert_eq!(
        (status, upserted["version"].clone(), upserted["value"].clone()),
        (StatusCode::OK, json!(2), json!("r43"))
    );
    let (status, fresh) = send(kv("POST", "/upsert").json(&json!({"key": "fresh", "value": true}))).await;
    assert_eq!((status, fresh["version"].clone()), (StatusCode::OK, json!(1)), "upsert creates too");

    let (status, put) = send(kv("PUT", "/release/next").json(&json!({"value": "r44", "tags": ["release"]}))).await;
    assert_eq!((status, put["version"].clone(), put["tags"].clone()), (StatusCode::OK, json!(3), json!(["release"])));
    let (status, _) = send(kv("PUT", "/missing").json(&json!({"value": 1}))).await;
    assert_eq!(status, 404);

    let (status, _) = send(kv("DELETE", "/release/next")).await;
    assert_eq!(status, 204);
    let (status, body) = send(kv("GET", "/release/next")).await;
    assert_eq!((status, body["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    let (status, _) = send(kv("DELETE", "/release/next")).await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn compare_and_set_refuses_a_stale_version_and_names_the_current_one(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let kv = |m: &str, p: &str| app.request(m, &format!("/sfp/api/key-value{p}")).bearer_auth(&owner);
    let (status, _) = send(kv("POST", "/upsert").json(&json!({"key": "flag", "value": 1, "expectedVersion": 0}))).await;
    assert_eq!(status, 200, "expectedVersion 0: only if absent");
    let (status, body) =
        send(kv("POST", "/upsert").json(&json!({"key": "flag", "value": 2, "expectedVersion": 0}))).await;
    assert_eq!((status, body["currentVersion"].clone()), (StatusCode::CONFLICT, json!(1)), "{body}");
    assert_eq!(body["code"], "version_conflict");
    let (status, _) = send(kv("POST", "/upsert").json(&json!({"key": "flag", "value": 2, "expectedVersion": 1}))).await;
    assert_eq!(status, 200);
    let (status, body) = send(kv("PUT", "/flag").json(&json!({"value": 3, "expectedVersion": 1}))).await;
    assert_eq!((status, body["currentVersion"].clone()), (StatusCode::CONFLICT, json!(2)));
    let (status, body) = send(kv("DELETE", "/flag?expectedVersion=1")).await;
    assert_eq!((status, body["currentVersion"].clone()), (StatusCode::CONFLICT, json!(2)));
    let (status, _) = send(kv("DELETE", "/flag?expectedVersion=2")).await;
    assert_eq!(status, 204);
    let (status, body) =
        send(kv("POST", "/upsert").json(&json!({"key": "flag", "value": 9, "expectedVersion": 5}))).await;
    assert_eq!((status, body["currentVersion"].clone()), (StatusCode::CONFLICT, json!(0)), "gone: version 0");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn parallel_writers_never_lose_an_update(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    // 40 clients increment one counter at once.
    let mut calls = Vec::new();
    for _ in 0..40 {
        let request = app.post("/sfp/api/key-value/increment").bearer_auth(&owner).json(&json!({"key": "builds"}));
        calls.push(tokio::spawn(async move { request.send().await.unwrap().status() }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let (_, counter) = send(app.get("/sfp/api/key-value/builds").bearer_auth(&owner)).await;
    assert_eq!(counter["value"], 40, "{counter}");
    assert_eq!(counter["version"], 40);

    // 10 clients each add 1 to a JSON document by read, modify, compare-and-set, retrying on 409.
    send(app.post("/sfp/api/key-value").bearer_auth(&owner).json(&json!({"key": "doc", "value": {"n": 0}}))).await;
    let mut writers = Vec::new();
    for _ in 0..10 {
        let (base, token) = (app.url.clone(), owner.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let current: Value =
                    client.get(format!("{base}/sfp/api/key-value/doc")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
                let next = json!({"value": {"n": current["value"]["n"].as_i64().unwrap() + 1}, "expectedVersion": current["version"]});
                let response =
                    client.put(format!("{base}/sfp/api/key-value/doc")).bearer_auth(&token).json(&next).send().await.unwrap();
                match response.status().as_u16() {
                    200 => return,
                    409 => continue,
                    other => panic!("unexpected {other}"),
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let (_, doc) = send(app.get("/sfp/api/key-value/doc").bearer_auth(&owner)).await;
    assert_eq!(doc["value"]["n"], 10, "every compare-and-set counted once: {doc}");
    let (status, body) =
        send(app.post("/sfp/api/key-value/increment").bearer_auth(&owner).json(&json!({"key": "doc"}))).await;
    assert_eq!((status, body["code"].clone()), (StatusCode::CONFLICT, json!("not_a_number")));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn expired_keys_are_gone_for_reads_and_swept(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let kv = |m: &str, p: &str| app.request(m, &format!("/sfp/api/key-value{p}")).bearer_auth(&owner);
    send(kv("POST", "").json(&json!({"key": "short", "value": 1, "ttlSeconds": 1}))).await;
    send(kv("POST", "").json(&json!({"key": "long", "value": 1, "ttlSeconds": 3600}))).await;
    send(kv("POST", "").json(&json!({"key": "tagged", "value": 1, "ttlSeconds": 1, "tags": ["old"]}))).await;
    let (_, second) = send(kv("POST", "/upsert").json(&json!({"key": "tagged", "value": 2, "ttlSeconds": 1}))).await;
    assert_eq!((second["version"].clone(), second["tags"].clone()), (json!(2), json!(["old"])), "{second}");
    let (status, live) = send(kv("GET", "/short")).await;
    assert_eq!(status, 200);
    assert!(live["expiresAt"].is_string());
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (status, _) = send(kv("GET", "/short")).await;
    assert_eq!(status, 404, "expired: gone at once");
    let (_, listed) = send(kv("GET", "")).await;
    let keys: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["long"]);
    // An upsert over an expired key starts it anew: version 1, none of the old tags.
    let (status, anew) = send(kv("POST", "/upsert").json(&json!({"key": "tagged", "value": 3}))).await;
    assert_eq!(status, 200, "{anew}");
    assert_eq!((anew["version"].clone(), anew["tags"].clone()), (json!(1), json!([])), "{anew}");
    assert_ne!(anew["createdAt"], second["createdAt"], "{anew}");
    let (status, _) = send(kv("POST", "").json(&json!({"key": "short", "value": 2}))).await;
    assert_eq!(status, 201, "an expired key can be created again");
    send(kv("PUT", "/short").json(&json!({"ttlSeconds": 1}))).await;
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(sfp_server::api::key_value::sweep_expired(&pool).await.unwrap(), 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM app.kv_entry").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 2, "the sweep deleted the expired row (long and tagged are left)");
    let (_, kept) = send(kv("PUT", "/long").json(&json!({"ttlSeconds": 0}))).await;
    assert_eq!(kept["expiresAt"], Value::Null, "ttlSeconds 0 removes the expiry");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn keys_are_listed_by_prefix_and_tag_a_page_at_a_time(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    for (key, tags) in
        [("pool/a", vec!["ci"]), ("pool/b", vec![]), ("pool/c", vec!["ci"]), ("poolx", vec!["ci"]), ("other", vec![])]
    {
        send(app.post("/sfp/api/key-value").bearer_auth(&owner).json(&json!({"key": key, "value": 1, "tags": tags})))
            .await;
    }
    let list = |q: &str| send(app.get(&format!("/sfp/api/key-value?{q}")).bearer_auth(&owner));
    let keys = |v: &Value| {
        v["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (_, page) = list("prefix=pool/&limit=2").await;
    assert_eq!(keys(&page), vec!["pool/a", "pool/b"]);
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let (_, rest) = list(&format!("prefix=pool/&limit=2&cursor={cursor}")).await;
    assert_eq!(keys(&rest), vec!["pool/c"]);
    assert_eq!(rest["nextCursor"], Value::Null);
    let (_, tagged) = list("tag=ci").await;
    assert_eq!(keys(&tagged), vec!["pool/a", "pool/c", "poolx"]);
    let (_, literal) = list("prefix=pool_").await;
    assert_eq!(keys(&literal), Vec::<String>::new(), "_ in a prefix is not a wildcard");
    let (status, _) = list("limit=0").await;
    assert_eq!(status, 400);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn members_read_owners_and_application_tokens_write(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let member = app.user("member@example.test", "member's password!", Role::Member).await;
    let token = app.application_token(&owner, 1).await["token"].as_str().unwrap().to_owned();
    let (status, _) =
        send(app.post("/sfp/api/key-value").bearer_auth(&token).json(&json!({"key": "by-ci", "value": 1}))).await;
    assert_eq!(status, 201, "an owner's application token writes");
    let (status, got) = send(app.get("/sfp/api/key-value/by-ci").bearer_auth(&member)).await;
    assert_eq!((status, got["value"].clone()), (StatusCode::OK, json!(1)), "a member reads");
    for (method, path, body) in [
        ("POST", "", json!({"key": "m", "value": 1})),
        ("POST", "/upsert", json!({"key": "by-ci", "value": 2})),
        ("PUT", "/by-ci", json!({"value": 2})),
        ("DELETE", "/by-ci", Value::Null),
        ("POST", "/increment", json!({"key": "by-ci"})),
    ] {
        let mut request = app.request(method, &format!("/sfp/api/key-value{path}")).bearer_auth(&member);
        if !body.is_null() {
            request = request.json(&body);
        }
        let (status, err) = send(request).await;
        assert_eq!(status, 403, "{method} {path}: {err}");
        assert!(err["message"].as_str().unwrap().contains("owner"), "{err}");
    }
    let (status, _) = send(app.get("/sfp/api/key-value/by-ci")).await;
    assert_eq!(status, 401);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn bad_input_is_refused_with_the_right_status(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let post = |body: Value| send(app.post("/sfp/api/key-value").bearer_auth(&owner).json(&body));
    let big = "x".repeat(300 * 1024);
    let (status, body) = post(json!({"key": "big", "value": big})).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["message"].as_str().unwrap().contains("262144"), "names the limit: {body}");
    for (body, named) in [
        (json!({"key": "", "value": 1}), "key"),
        (json!({"key": "-starts-with-dash", "value": 1}), "key"),
        (json!({"key": "has space", "value": 1}), "key"),
        (json!({"key": "k".repeat(513), "value": 1}), "key"),
        (json!({"key": "t", "value": 1, "tags": [""]}), "tag"),
        (json!({"key": "t", "value": 1, "ttlSeconds": -1}), "ttlSeconds"),
        (json!({"key": "t", "value": "nul \u{0000} inside"}), "U+0000"),
        (json!({"key": "t", "value": 1, "expectedVersion": 1}), "expectedVersion"),
    ] {
        let (status, err) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["message"].as_str().unwrap().contains(named), "{body}: {err}");
    }
    let (status, err) = post(json!({"value": 1})).await;
    assert_eq!((status, err["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("validation_failed")), "{err}");
    let (status, err) = post(json!({"key": "t", "value": 1, "colour": "red"})).await;
    assert_eq!(status, 422, "unknown fields are refused: {err}");
    send(app.post("/sfp/api/key-value").bearer_auth(&owner).json(&json!({"key": "n", "value": i64::MAX}))).await;
    let (status, err) =
        send(app.post("/sfp/api/key-value/increment").bearer_auth(&owner).json(&json!({"key": "n"}))).await;
    assert_eq!((status, err["code"].clone()), (StatusCode::CONFLICT, json!("out_of_range")), "{err}");
}

/// The one-statement writes take the user they act for as an argument: nobody but the
/// server's own role may call them, or any signed-in client could claim to be an owner.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_write_functions_are_the_servers_alone(pool: PgPool) {
    // An owner: were the functions callable, the writes would succeed.
    let hash = sfp_server::auth::password::hash("an owner's long password");
    let owner = sfp_server::auth::sessions::create_user(&pool, "owner@example.test", &hash, Role::Owner)
        .await
        .unwrap()
        .unwrap();
    for role in ["authenticated", "anon", "service_role"] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}"))).execute(&mut *tx).await.unwrap();
        for call in [
            "SELECT private.kv_upsert_for($1, 'k', '1', NULL, NULL)",
            "SELECT private.doc_write_for($1, 'c/k', 'c', '1', NULL)",
        ] {
            let mut savepoint = sqlx::Connection::begin(&mut *tx).await.unwrap();
            let refused = sqlx::query(call).bind(owner).execute(&mut *savepoint).await.unwrap_err();
            assert!(sfp_server::auth::rls::is_refused(&refused), "{role}: {call}: {refused}");
            savepoint.rollback().await.unwrap();
        }
        tx.rollback().await.unwrap();
    }
}

/// The one-statement writes decide in SQL what the tables' policies decide (the API's access
/// table refuses non-owners before that, so the database's decision is checked directly):
/// for an owner, a member, a user without a role and an unknown id, each function succeeds
/// exactly when the same write under row-level security (the user's claims, role
/// `authenticated`) does, and refuses with the policies' error otherwise.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_fast_writes_decide_as_the_policies_do(pool: PgPool) {
    let mut users = Vec::new();
    for (email, role) in [
        ("owner@example.test", Some(Role::Owner)),
        ("member@example.test", Some(Role::Member)),
        ("norole@example.test", None),
    ] {
        let hash = sfp_server::auth::password::hash("a long enough password");
        let id = sfp_server::auth::sessions::create_user(&pool, email, &hash, role.unwrap_or(Role::Member))
            .await
            .unwrap()
            .unwrap();
        if role.is_none() {
            sqlx::query("DELETE FROM app.user_role WHERE user_id = $1").bind(id).execute(&pool).await.unwrap();
        }
        users.push((email, id));
    }
    users.push(("unknown", uuid::Uuid::new_v4()));

    // The outcome of `sql` (binding the user's id) in a transaction that is rolled back; with
    // `claims`, under the policies as that user.
    async fn attempt(pool: &PgPool, sql: &str, uid: uuid::Uuid, claims: bool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await.unwrap();
        if claims {
            let claims = json!({"sub": uid, "role": "authenticated"}).to_string();
            sqlx::query("SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)")
                .bind(&claims)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let outcome = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).bind(uid).execute(&mut *tx).await.map(|_| ());
        tx.rollback().await.unwrap();
        outcome
    }
    let cases = [
        (
            "INSERT INTO app.kv_entry (key, value, created_by, updated_by) VALUES ('k', '1', $1, $1)",
            "SELECT * FROM private.kv_upsert_for($1, 'k', '1', NULL, NULL)",
        ),
        (
            "WITH c AS (INSERT INTO app.doc_collection (name, created_by) VALUES ('c', $1) ON CONFLICT DO NOTHING) \
             INSERT INTO app.doc (key, collection, value, version, created_by, updated_by) VALUES ('c/d', 'c', '1', 1, $1, $1)",
            "SELECT * FROM private.doc_write_for($1, 'c/d', 'c', '1', NULL)",
        ),
    ];
    let mut outcomes = Vec::new();
    for (who, uid) in &users {
        for (under_policies, fast) in cases {
            let policy = attempt(&pool, under_policies, *uid, true).await;
            let decided = attempt(&pool, fast, *uid, false).await;
            assert_eq!(policy.is_ok(), decided.is_ok(), "{who}: policies {policy:?}, function {decided:?}");
            for e in [policy, decided].into_iter().filter_map(Result::err) {
                assert!(sfp_server::auth::rls::is_refused(&e), "{who}: {e}");
            }
        }
        outcomes.push((*who, attempt(&pool, cases[0].1, *uid, false).await.is_ok()));
    }
    // The comparison is only worth something if both answers occur.
    assert_eq!(
        outcomes,
        [
            ("owner@example.test", true),
            ("member@example.test", false),
            ("norole@example.test", false),
            ("unknown", false)
        ]
    );
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_write_stuck_behind_a_held_row_lock_gives_up_with_503_and_frees_its_lane(pool: PgPool) {
    let app = TestApi::spawn(pool.clone()).await;
    let owner = app.admin_token().await;
    let upsert = |key: &str, n: i64| {
        app.request("POST", "/sfp/api/key-value/upsert").bearer_auth(&owner).json(&json!({"key": key, "value": n}))
    };
    assert_eq!(send(upsert("held", 1)).await.0, 200);
    // Someone else (an operator in psql, say) holds the row's lock in an open transaction.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM app.kv_entry WHERE key = 'held' FOR UPDATE").execute(&mut *holder).await.unwrap();

    // (Without a bound on the lock wait, this request would hang for as long as the lock.)
    let stuck = tokio::time::timeout(std::time::Duration::from_secs(30), send(upsert("held", 2)));
    let (status, body) = stuck.await.expect("the stuck write gave up");
    assert_eq!((status, body["code"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("unavailable")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("try again"), "{body}");
    // The lane it waited in is free again: other keys are written as before.
    for n in 0..4 {
        assert_eq!(send(upsert(&format!("free/{n}"), n)).await.0, 200);
    }
    // Once the lock is released, the same write goes through, one version on.
    holder.rollback().await.unwrap();
    let (status, body) = send(upsert("held", 3)).await;
    assert_eq!((status, body["version"].clone(), body["value"].clone()), (StatusCode::OK, json!(2), json!(3)));
}
