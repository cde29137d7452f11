//! Assignment: priority order, slots, streams, stale reports.

use serde_json::json;
use sfp_protocol::pb;
use sqlx::PgPool;

use crate::harness::*;

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_one_slot_worker_takes_higher_priority_first_then_fifo(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("prio", vec![task("prio", "t", &[])]).await;
    // Queue everything before any worker exists.
    let mut expected_high = Vec::new();
    let mut expected_low = Vec::new();
    for i in 0..4 {
        expected_low.push(engine.trigger("prio", json!({"i": i}), Some(1)).await);
        expected_high.push(engine.trigger("prio", json!({"i": i}), Some(3)).await);
    }
    let medium = engine.trigger("prio", json!({}), Some(2)).await;
    let mut worker = TestWorker::start(&engine, &["prio:t"], 1, |_| Reply::Complete(json!({}))).await;
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(worker.next_assignment().await.workflow_run_id);
    }
    let mut expected = expected_high.clone();
    expected.push(medium);
    expected.extend(expected_low);
    assert_eq!(order, expected, "priority 3, then 2, then 1; first in first out within each");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_worker_whose_stream_dropped_gets_no_new_work(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("drop", vec![task("drop", "t", &[])]).await;
    let gone = TestWorker::start(&engine, &["drop:t"], 10, |_| Reply::Complete(json!({}))).await;
    gone.disconnect();
    // Wait until the engine has noticed (the worker row turns inactive).
    let gone_id: uuid::Uuid = gone.id.parse().unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let active: bool = sqlx::query_scalar("SELECT is_active FROM engine.worker WHERE id = $1")
                .bind(gone_id)
                .fetch_one(&engine.pool)
                .await
                .unwrap();
            if !active {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("worker marked inactive");
    let run = engine.trigger("drop", json!({}), None).await;
    let mut live = TestWorker::start(&engine, &["drop:t"], 1, |_| Reply::Complete(json!({}))).await;
    let action = live.next_assignment().await;
    assert_eq!(action.workflow_run_id, run);
    engine.wait_finished(&run).await;
    let assigned_to_gone: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.task_event WHERE worker_id = $1")
        .bind(gone_id)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(assigned_to_gone, 0);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn slots_are_freed_on_every_terminal_state(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("slots", vec![task("slots", "t", &[])]).await;
    // One slot: each run can only start after the previous one gave the slot back.
    let mut worker =
        TestWorker::start(&engine, &["slots:t"], 1, |a| match payload(a)["input"]["kind"].as_str().unwrap() {
            "ok" => Reply::Complete(json!({})),
            "fail" => Reply::Fail("no".into()),
            "garbage" => Reply::CompleteRaw("]]".into()),
            _ => Reply::Hold,
        })
        .await;
    for kind in ["ok", "fail", "garbage", "ok"] {
        let run = engine.trigger("slots", json!({"kind": kind}), None).await;
        let action = worker.next_assignment().await;
        assert_eq!(action.workflow_run_id, run, "{kind} was assigned, so the slot was free");
        engine.wait_finished(&run).await;
    }
    // A cancelled attempt gives its slot back too.
    let held = engine.trigger("slots", json!({"kind": "hold"}), None).await;
    let action = worker.next_assignment().await;
    assert_eq!(action.workflow_run_id, held);
    report(&engine, &worker.id, &action, pb::StepActionEventType::StepEventTypeCancelled, "", Some(0)).await;
    let next = engine.trigger("slots", json!({"kind": "ok"}), None).await;
    assert_eq!(worker.next_assignment().await.workflow_run_id, next);
    engine.wait_finished(&next).await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.task_runtime").fetch_one(&engine.pool).await.unwrap();
    assert_eq!(left, 0, "no attempt holds a slot at the end");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn stale_and_duplicate_reports_change_nothing(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut t = task("stale", "t", &[]);
    t.retries = 1;
    engine.put_workflow("stale", vec![t]).await;
    let mut worker = TestWorker::start(&engine, &["stale:t"], 1, |_| Reply::Hold).await;
    let run = engine.trigger("stale", json!({}), None).await;
    let first = worker.next_assignment().await;
    // Duplicate STARTED (Python sends two) is harmless.
    for _ in 0..2 {
        report(&engine, &worker.id, &first, pb::StepActionEventType::StepEventTypeStarted, "", Some(0)).await;
    }
    // A report for an attempt that does not exist is ignored.
    report(&engine, &worker.id, &first, pb::StepActionEventType::StepEventTypeCompleted, "{}", Some(7)).await;
    assert!(!engine.details(&run).await.done);
    // Fail attempt 0: attempt 1 is queued; a late COMPLETED for attempt 0 is ignored.
    report(&engine, &worker.id, &first, pb::StepActionEventType::StepEventTypeFailed, "x", Some(0)).await;
    let second = worker.next_assignment().await;
    assert_eq!(second.retry_count, 1);
    report(&engine, &worker.id, &first, pb::StepActionEventType::StepEventTypeCompleted, r#"{"late":true}"#, Some(0))
        .await;
    assert!(!engine.details(&run).await.done, "a stale completion must not finish the run");
    // A completion without retry_count (the Rust SDK sends none) applies to the current attempt.
    report(&engine, &worker.id, &second, pb::StepActionEventType::StepEventTypeCompleted, r#"{"n":2}"#, None).await;
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"n":2}"#));
    let started: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.task_event WHERE event_type = 'STARTED' AND retry_count = 0")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(started, 1, "three STARTED reports for attempt 0 (one of them concurrent) recorded once");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_released_slot_goes_to_the_next_task_and_is_not_given_back_twice(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("rel", vec![task("rel", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["rel:t"], 1, |_| Reply::Hold).await;
    let first = engine.trigger("rel", json!({}), None).await;
    let a = worker.next_assignment().await;
    assert_eq!(a.workflow_run_id, first);
    let second = engine.trigger("rel", json!({}), None).await;
    engine
        .dispatcher()
        .release_slot(pb::ReleaseSlotRequest { task_run_external_id: a.task_run_external_id.clone() })
        .await
        .unwrap();
    let b = worker.next_assignment().await;
    assert_eq!(b.workflow_run_id, second, "the released slot took the next task");
    // Finishing the first task must not free the slot a second time.
    report(&engine, &worker.id, &a, pb::StepActionEventType::StepEventTypeCompleted, "{}", Some(0)).await;
    engine.wait_finished(&first).await;
    let view = engine.rest_get(&format!("/api/v1/workers/{}", worker.id)).await;
    assert_eq!(view["availableRuns"], 0, "the second task holds the only slot: {view}");

    let err = engine
        .dispatcher()
        .release_slot(pb::ReleaseSlotRequest { task_run_external_id: a.task_run_external_id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "a finished task has no slot to release");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn refresh_timeout_extends_the_running_attempts_deadline(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("long", vec![task("long", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["long:t"], 1, |_| Reply::Hold).await;
    engine.trigger("long", json!({}), None).await;
    let a = worker.next_assignment().await;
    let task_id: uuid::Uuid = a.task_run_external_id.parse().unwrap();
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT timeout_at FROM engine.task_runtime WHERE task_id = $1")
            .bind(task_id)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    let answer = engine
        .dispatcher()
        .refresh_timeout(pb::RefreshTimeoutRequest {
            task_run_external_id: a.task_run_external_id.clone(),
            increment_timeout_by: "10m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT timeout_at FROM engine.task_runtime WHERE task_id = $1")
            .bind(task_id)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!((after - before).num_seconds(), 600);
    assert_eq!(answer.timeout_at.unwrap().seconds, after.timestamp());

    let bad = engine
        .dispatcher()
        .refresh_timeout(pb::RefreshTimeoutRequest {
            task_run_external_id: a.task_run_external_id,
            increment_timeout_by: "soon".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let unknown = engine
        .dispatcher()
        .refresh_timeout(pb::RefreshTimeoutRequest {
            task_run_external_id: uuid::Uuid::new_v4().to_string(),
            increment_timeout_by: "1m".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Two engine processes on one database: work triggered through one reaches a worker
/// connected to the other at once (LISTEN/NOTIFY), long before the other's own poll.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn work_queued_through_one_engine_wakes_the_other_engines_worker(pool: PgPool) {
    let slow_poll = std::time::Duration::from_secs(600);
    let here = TestEngine::start_polling(pool.clone(), slow_poll).await;
    let there = TestEngine::start_polling(pool, slow_poll).await;
    here.put_workflow("across", vec![task("across", "t", &[])]).await;
    let mut worker = TestWorker::start(&here, &["across:t"], 2, |_| Reply::Complete(json!({"ok": 1}))).await;
    // Let the first engine's assigner settle into waiting.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..3 {
        let run = there.trigger("across", json!({}), None).await;
        let action = worker.next_assignment().await;
        assert_eq!(action.workflow_run_id, run);
        assert_eq!(there.wait_finished(&run).await.results[0].output.as_deref(), Some(r#"{"ok":1}"#));
    }
}
