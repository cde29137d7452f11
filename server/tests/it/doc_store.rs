//! The document store: versions and history, compare-and-set by body or If-Match, path keys
//! listed by prefix, collections with their documents and changelog, roles, bad input.

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
async fn every_write_is_a_version_and_history_is_readable(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let doc = |m: &str, p: &str| app.request(m, &format!("/sfp/api/doc-store/docs/{p}")).bearer_auth(&owner);

    let (status, created) = send(doc("POST", "releases/2026/r1").json(&json!({"value": {"packages": ["core"]}}))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["version"].clone(), created["collection"].clone()), (json!(1), json!("releases")));
    let (status, updated) =
        send(doc("POST", "releases/2026/r1").json(&json!({"value": {"packages": ["core", "data"]}, "version": 1})))
            .await;
    assert_eq!((status, updated["version"].clone()), (StatusCode::OK, json!(2)));
    let (status, stale) = send(doc("POST", "releases/2026/r1").json(&json!({"value": {}, "version": 1}))).await;
    assert_eq!(
        (status, stale["currentVersion"].clone(), stale["code"].clone()),
        (StatusCode::CONFLICT, json!(2), json!("version_conflict"))
    );

    let response = doc("GET", "releases/2026/r1").send().await.unwrap();
    assert_eq!(response.headers()["etag"], "\"2\"");
    let current: Value = response.json().await.unwrap();
    assert_eq!(current["value"]["packages"], json!(["core", "data"]));
    let (_, version) = send(doc("GET", "releases/2026/r1/version")).await;
    assert_eq!(version["version"], 2);
    let (status, first) = send(doc("GET", "releases/2026/r1?version=1")).await;
    assert_eq!((status, first["value"].clone()), (StatusCode::OK, json!({"packages": ["core"]})));

    // If-Match: the ETag of a read makes the next write conditional.
    let (status, _) =
        send(doc("POST", "releases/2026/r1").header("If-Match", "\"1\"").json(&json!({"value": {}}))).await;
    assert_eq!(status, 409);
    let (status, _) =
        send(doc("POST", "releases/2026/r1").header("If-Match", "\"2\"").json(&json!({"value": {"final": true}})))
            .await;
    assert_eq!(status, 200);

    let (status, body) = send(doc("DELETE", "releases/2026/r1").json(&json!({"version": 1}))).await;
    assert_eq!((status, body["currentVersion"].clone()), (StatusCode::CONFLICT, json!(3)));
    let (status, _) = send(doc("DELETE", "releases/2026/r1").json(&json!({"version": 3}))).await;
    assert_eq!(status, 204);
    let (status, _) = send(doc("GET", "releases/2026/r1")).await;
    assert_eq!(status, 404);
    let (status, history) = send(doc("GET", "releases/2026/r1/history")).await;
    assert_eq!(status, 200);
    let versions: Vec<(i64, bool)> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_i64().unwrap(), v["deleted"].as_bool().unwrap()))
        .collect();
    assert_eq!(versions, vec![(4, true), (3, false), (2, false), (1, false)], "the deletion is in the history");
    let (status, again) = send(doc("POST", "releases/2026/r1").json(&json!({"value": {"reborn": true}}))).await;
    assert_eq!((status, again["version"].clone()), (StatusCode::CREATED, json!(5)), "versions go on after a deletion");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn keys_list_by_prefix_and_collections_hold_docs_and_changelogs(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    for key in ["releases/2026/r1", "releases/2026/r2", "releases/2025/r9", "builds/b1"] {
        let (status, _) = send(
            app.post(&format!("/sfp/api/doc-store/docs/{key}")).bearer_auth(&owner).json(&json!({"value": {"k": key}})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let get = |p: &str| send(app.get(&format!("/sfp/api{p}")).bearer_auth(&owner));
    let keys = |v: &Value| {
        v["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (_, page) = get("/doc-store/docs?prefix=releases/2026/&limit=1").await;
    assert_eq!(keys(&page), vec!["releases/2026/r1"]);
    let (_, rest) =
        get(&format!("/doc-store/docs?prefix=releases/2026/&cursor={}", page["nextCursor"].as_str().unwrap())).await;
    assert_eq!(keys(&rest), vec!["releases/2026/r2"]);

    let (_, collections) = get("/doc-store/collections").await;
    let named: Vec<(String, i64)> = collections
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["documents"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        named,
        vec![("builds".to_owned(), 1), ("releases".to_owned(), 3)],
        "collections come with their first document"
    );
    let (status, _) =
        send(app.post("/sfp/api/doc-store/collections").bearer_auth(&owner).json(&json!({"name": "releases"}))).await;
    assert_eq!(status, 409);
    let (status, _) =
        send(app.post("/sfp/api/doc-store/collections").bearer_auth(&owner).json(&json!({"name": "audits"}))).await;
    assert_eq!(status, 201);
    let (_, docs) = get("/doc-store/collections/releases").await;
    assert_eq!(keys(&docs), vec!["releases/2025/r9", "releases/2026/r1", "releases/2026/r2"]);
    for n in 0..3 {
        let (status, _) = send(
            app.post("/sfp/api/doc-store/collections/audits/changelog")
                .bearer_auth(&owner)
                .json(&json!({"value": {"n": n}})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (_, log) = get("/doc-store/collections/audits?store=changelog&limit=2").await;
    let ns: Vec<i64> = log["items"].as_array().unwrap().iter().map(|i| i["value"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1], "oldest first");
    let (_, tail) =
        get(&format!("/doc-store/collections/audits?store=changelog&cursor={}", log["nextCursor"].as_str().unwrap()))
            .await;
    assert_eq!(tail["items"].as_array().unwrap().len(), 1);
    let (status, _) = get("/doc-store/collections/audits?store=blob").await;
    assert_eq!(status, 400);

    let (status, _) = send(app.request("DELETE", "/sfp/api/doc-store/collections/releases").bearer_auth(&owner)).await;
    assert_eq!(status, 204);
    let (status, _) = get("/doc-store/docs/releases/2026/r1").await;
    assert_eq!(status, 404, "its documents went with it");
    let (status, _) = get("/doc-store/docs/releases/2026/r1/history").await;
    assert_eq!(status, 404, "and their history");
    let (status, _) = get("/doc-store/collections/releases").await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn members_read_and_bad_input_is_refused(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let member = app.user("member@example.test", "member's password!", Role::Member).await;
    send(app.post("/sfp/api/doc-store/docs/cfg/main").bearer_auth(&owner).json(&json!({"value": {"a": 1}}))).await;
    let (status, _) = send(app.get("/sfp/api/doc-store/docs/cfg/main").bearer_auth(&member)).await;
    assert_eq!(status, 200, "members read");
    let (status, err) =
        send(app.post("/sfp/api/doc-store/docs/cfg/main").bearer_auth(&member).json(&json!({"value": {}}))).await;
    assert_eq!(status, 403, "{err}");
    let (status, _) = send(app.request("DELETE", "/sfp/api/doc-store/collections/cfg").bearer_auth(&member)).await;
    assert_eq!(status, 403);

    let post = |key: &str, body: Value| {
        send(app.post(&format!("/sfp/api/doc-store/docs/{key}")).bearer_auth(&owner).json(&body))
    };
    let big = "x".repeat(1024 * 1024 + 10);
    let (status, err) = post("cfg/big", json!({"value": big})).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["message"].as_str().unwrap().contains("1048576"), "{err}");
    for key in ["cfg//double", "cfg/-dash", "cfg/with space", "cfg/main/history", "cfg/main/version"] {
        let (status, err) = post(key, json!({"value": 1})).await;
        assert_eq!(status, 400, "{key}: {err}");
    }
    let (status, err) = post("cfg/x", json!({"value": 1, "version": 2})).await;
    assert_eq!((status, err["currentVersion"].clone()), (StatusCode::CONFLICT, json!(0)), "no such document yet");
    let (status, _) = post("cfg/x", json!({"value": 1, "extra": true})).await;
    assert_eq!(status, 422);
    let (status, err) = send(
        app.post("/sfp/api/doc-store/docs/cfg/main")
            .bearer_auth(&owner)
            .header("If-Match", "\"1\"")
            .json(&json!({"value": {}, "version": 7})),
    )
    .await;
    assert_eq!(status, 400, "body and If-Match disagree: {err}");
    let (status, _) =
        send(app.post("/sfp/api/doc-store/collections").bearer_auth(&owner).json(&json!({"name": "bad/name"}))).await;
    assert_eq!(status, 400);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn queries_filter_sort_and_page_across_collections(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    for (key, value) in [
        ("releases/r1", json!({"status": "done", "build": 3, "env": "uat", "tags": ["x", "y"]})),
        ("releases/r2", json!({"status": "open", "build": 10, "env": "sit"})),
        ("releases/r3", json!({"status": "done", "build": 7, "env": "sit", "tags": ["y"]})),
        ("builds/b1", json!({"status": "done", "build": 1})),
    ] {
        let (status, _) = send(
            app.post(&format!("/sfp/api/doc-store/docs/{key}")).bearer_auth(&owner).json(&json!({"value": value})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let query = |body: Value| send(app.post("/sfp/api/doc-store/query").bearer_auth(&owner).json(&body));
    let keys = |v: &Value| {
        v["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };

    let (status, done) =
        query(json!({"collections": ["releases"], "filter": [{"path": "status", "op": "eq", "value": "done"}]})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(keys(&done), vec!["releases/r1", "releases/r3"]);
    let (_, everywhere) = query(json!({"filter": [{"path": "status", "op": "eq", "value": "done"}]})).await;
    assert_eq!(keys(&everywhere), vec!["builds/b1", "releases/r1", "releases/r3"], "across collections");
    let (_, big) = query(
        json!({"filter": [{"path": "build", "op": "gte", "value": 5}], "sort": {"by": "build", "direction": "desc"}}),
    )
    .await;
    assert_eq!(keys(&big), vec!["releases/r2", "releases/r3"]);
    let (_, envs) = query(json!({"filter": [{"path": "env", "op": "in", "value": ["uat", "sit"]}, {"path": "status", "op": "ne", "value": "open"}]})).await;
    assert_eq!(keys(&envs), vec!["releases/r1", "releases/r3"]);
    let (_, tagged) = query(json!({"filter": [{"path": "tags", "op": "contains", "value": ["y"]}]})).await;
    assert_eq!(keys(&tagged), vec!["releases/r1", "releases/r3"]);
    let (_, with_tags) = query(json!({"prefix": "releases/", "filter": [{"path": "tags", "op": "exists"}]})).await;
    assert_eq!(keys(&with_tags), vec!["releases/r1", "releases/r3"]);
    let (_, exact) = query(json!({"filter": [{"path": "tags", "op": "eq", "value": ["y"]}]})).await;
    assert_eq!(keys(&exact), vec!["releases/r3"], "eq on an array is equality, not containment");

    // Pages of one, by build ascending, through the cursor.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let (status, page) =
            query(json!({"collections": ["releases"], "sort": {"by": "build"}, "limit": 1, "cursor": cursor})).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(keys(&page));
        cursor = page["nextCursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen, vec!["releases/r1", "releases/r3", "releases/r2"]);

    for (body, named) in [
        (json!({"filter": [{"path": "status", "op": "like", "value": "d%"}]}), "like"),
        (json!({"filter": [{"path": "a..b", "op": "eq", "value": 1}]}), "a..b"),
        (json!({"filter": [{"path": "build", "op": "gt", "value": true}]}), "compares"),
        (json!({"filter": [{"path": "env", "op": "in", "value": "uat"}]}), "array"),
        (json!({"filter": [{"path": "env", "op": "eq"}]}), "needs a value"),
        (json!({"cursor": "not-a-cursor"}), "cursor"),
        (json!({"sort": {"by": "build", "direction": "sideways"}}), "direction"),
        (json!({"limit": 0}), "limit"),
    ] {
        let (status, err) = query(body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["message"].as_str().unwrap().contains(named), "{body}: {err}");
    }
}

/// Parallel writers: without a version every write lands as its own version (none lost, none
/// twice); at one expected version exactly one writer wins and the others get 409 with the
/// version that won.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn parallel_writers_never_lose_or_duplicate_a_version(pool: PgPool) {
    let app = TestApi::spawn(pool).await;
    let owner = app.admin_token().await;
    let write = |body: Value| {
        let request = app.post("/sfp/api/doc-store/docs/race/doc").bearer_auth(&owner).json(&body);
        async move { send(request).await }
    };
    let (status, _) = write(json!({"value": {"n": 0}})).await;
    assert_eq!(status, 201);
    let writes = (1..=20).map(|n| write(json!({"value": {"n": n}})));
    let answers = futures_util::future::join_all(writes).await;
    let mut versions: Vec<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["version"].as_i64().unwrap()
        })
        .collect();
    versions.sort();
    assert_eq!(versions, (2..=21).collect::<Vec<_>>(), "each write its own version");
    let (_, history) = send(app.get("/sfp/api/doc-store/docs/race/doc/history").bearer_auth(&owner)).await;
    assert_eq!(history["versions"].as_array().unwrap().len(), 21, "{history}");

    let racers = (0..10).map(|n| write(json!({"value": {"racer": n}, "version": 21})));
    let answers = futures_util::future::join_all(racers).await;
    let won: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert_eq!(won[0].1["version"], 22);
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!((*status, body["currentVersion"].clone()), (StatusCode::CONFLICT, json!(22)), "{body}");
    }
}
