//! Group commit of the hottest writes: writes that queue up behind the ones in flight leave
//! together, none is lost or applied twice, and each caller gets the answer its write alone
//! would have had, also when one write in a batch is refused.
//!
//! `#[sqlx::test]` runs on one thread: every write below is queued before the queue's task
//! first runs, so the first batch holds the first `MAX_BATCH` writes.

use futures_util::future::join_all;
use serde_json::json;
use sfp_server::api::write_batch::{DocWrite, MAX_BATCH, Upsert, WriteBatches, Written};
use sfp_server::auth::Role;
use sqlx::PgPool;

async fn user(pool: &PgPool, email: &str, role: Role) -> uuid::Uuid {
    let hash = sfp_server::auth::password::hash("a long enough password");
    sfp_server::auth::sessions::create_user(pool, email, &hash, role).await.unwrap().unwrap()
}

fn upsert(user_id: uuid::Uuid, key: &str, n: usize) -> Upsert {
    Upsert { user_id, key: key.into(), value: json!({"n": n}), tags: None, ttl: None }
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn queued_upserts_share_batches_and_each_gets_its_own_answer(pool: PgPool) {
    let owner = user(&pool, "owner@example.test", Role::Owner).await;
    let member = user(&pool, "member@example.test", Role::Member).await;
    let writes = WriteBatches::start(&pool);

    // 29 upserts of one key, 10 of other keys, and one by a member (refused) among them.
    let mut calls = Vec::new();
    for n in 0..40 {
        let item = match n {
            5 => upsert(member, "hot", n),
            n if n % 4 == 3 => upsert(owner, &format!("cold/{n}"), n),
            n => upsert(owner, "hot", n),
        };
        calls.push(writes.kv.write(item));
    }
    let answers = join_all(calls).await;

    let stats = &writes.kv.stats;
    assert!(stats.batches.get() >= 1, "nothing was batched");
    assert!(stats.batched_writes.get() >= MAX_BATCH as u64, "{} batched", stats.batched_writes.get());
    assert!(stats.retried_alone.get() >= 1, "the refused write's batch was not retried alone");
    let mut hot_versions = Vec::new();
    for (n, answer) in answers.iter().enumerate() {
        match (n, answer) {
            (5, Err(e)) => assert!(sfp_server::auth::rls::is_refused(e), "{e}"),
            (5, Ok(_)) => panic!("a member's upsert was accepted"),
            (_, Err(e)) => panic!("write {n}: {e}"),
            (n, Ok(entry)) if n % 4 == 3 => assert_eq!((entry.key.as_str(), entry.version), (&*format!("cold/{n}"), 1)),
            (n, Ok(entry)) => {
                assert_eq!(entry.value, json!({"n": n}), "write {n} answered with another write's row");
                hot_versions.push(entry.version);
            }
        }
    }
    // Each write one version on: none lost, none applied twice although the batch it was in
    // was rolled back and written again. (Writes in flight at the same time, like concurrent
    // requests, have no order among them: the other batch may commit first.)
    let last = answers.iter().flatten().filter(|e| e.key == "hot").max_by_key(|e| e.version).unwrap().value.clone();
    hot_versions.sort();
    assert_eq!(hot_versions, (1..=29).collect::<Vec<_>>());
    let (version, value): (i64, serde_json::Value) =
        sqlx::query_as("SELECT version, value FROM app.kv_entry WHERE key = 'hot'").fetch_one(&pool).await.unwrap();
    assert_eq!((version, value), (29, last));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn queued_document_writes_keep_versions_history_and_conflicts(pool: PgPool) {
    let owner = user(&pool, "owner@example.test", Role::Owner).await;
    let writes = WriteBatches::start(&pool);
    let doc = |n: usize, key: &str, expected: Option<i64>| DocWrite {
        user_id: owner,
        key: key.into(),
        collection: key.split('/').next().unwrap().into(),
        value: json!({"n": n}),
        expected,
    };
    // The first creates the document; 19 more update it; one expects a version it is not at
    // (a conflict, answered in the batch); one creates another collection's document.
    // The versions below are in arrival order because all 22 writes are one batch.
    const { assert!(22 <= MAX_BATCH) };
    let mut calls = Vec::new();
    for n in 0..22 {
        calls.push(writes.doc.write(match n {
            10 => doc(n, "releases/r1", Some(999)),
            15 => doc(n, "builds/b1", Some(0)),
            n => doc(n, "releases/r1", None),
        }));
    }
    let answers: Vec<_> = join_all(calls).await.into_iter().map(Result::unwrap).collect();
    assert!(writes.doc.stats.batches.get() >= 1);
    assert_eq!(writes.doc.stats.retried_alone.get(), 0, "a conflict is an answer, not a failed batch");

    let mut versions = Vec::new();
    for (n, w) in answers.iter().enumerate() {
        match n {
            10 => assert_eq!((w.created, w.current.is_some()), (None, true), "the stale write conflicted: {n}"),
            15 => assert_eq!((w.created, w.version, w.collection.as_deref()), (Some(true), Some(1), Some("builds"))),
            _ => {
                assert_eq!(w.value, Some(json!({"n": n})));
                assert_eq!(w.created, Some(n == 0));
                versions.push(w.version.unwrap());
            }
        }
    }
    assert_eq!(versions, (1..=20).collect::<Vec<_>>());
    let history: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT version, value FROM app.doc_version WHERE key = 'releases/r1' ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(history.len(), 20, "every write in the history once");
    assert_eq!(history.last().unwrap(), &(20, json!({"n": 21})));
}

/// Waits until `n` sessions of this test's database wait for a lock (other tests run in
/// databases of their own on the same cluster and may hold or wait for locks too).
async fn wait_for_lock_waiters(pool: &PgPool, n: usize) {
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting as usize >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Our write of `race/d` (expecting `expected`), sent while another transaction has created
/// that document and not yet committed; its answer once the other commits.
async fn write_while_another_creates(pool: &PgPool, expected: Option<i64>) -> Written {
    let owner = user(pool, "owner@example.test", Role::Owner).await;
    let writes = WriteBatches::start(pool);
    let mut other = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO app.doc_collection (name) VALUES ('race')").execute(&mut *other).await.unwrap();
    sqlx::query("INSERT INTO app.doc (key, collection, value) VALUES ('race/d', 'race', '{\"by\": \"other\"}')")
        .execute(&mut *other)
        .await
        .unwrap();
    let write = DocWrite {
        user_id: owner,
        key: "race/d".into(),
        collection: "race".into(),
        value: json!({"by": "us"}),
        expected,
    };
    let ours = writes.doc.write(write);
    tokio::pin!(ours);
    tokio::select! {
        done = &mut ours => panic!("the write did not wait for the other creation: {:?}", done.map(|w| w.version)),
        _ = wait_for_lock_waiters(pool, 1) => {}
    }
    other.commit().await.unwrap();
    ours.await.expect("a write is not refused with an error when the document appears meanwhile")
}

async fn stored(pool: &PgPool) -> (i64, serde_json::Value) {
    sqlx::query_as("SELECT version, value FROM app.doc WHERE key = 'race/d'").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_document_created_meanwhile_by_another_write_is_updated_not_refused(pool: PgPool) {
    let ours = write_while_another_creates(&pool, None).await;
    assert_eq!((ours.created, ours.version, ours.value), (Some(false), Some(2), Some(json!({"by": "us"}))));
    assert_eq!(stored(&pool).await, (2, json!({"by": "us"})));
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_create_only_write_that_loses_the_race_is_a_conflict_with_the_current_version(pool: PgPool) {
    let ours = write_while_another_creates(&pool, Some(0)).await;
    assert_eq!((ours.created, ours.current, ours.version), (None, Some(1), None), "a conflict naming version 1");
    assert_eq!(stored(&pool).await, (1, json!({"by": "other"})), "the other creation stands");
}
