//! What the engine decides on its own: tasks past their timeout, workers that vanish, tasks
//! nobody takes in time.

use std::time::Duration;

use serde_json::json;
use sfp_protocol::pb;
use sqlx::PgPool;

use crate::harness::*;

fn timed(workflow: &str, timeout: &str, retries: i32) -> sfp_protocol::pb::v1::CreateTaskOpts {
    let mut t = task(workflow, "t", &[]);
    t.timeout = timeout.into();
    t.retries = retries;
    t
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_hung_task_times_out_is_cancelled_on_its_worker_and_frees_the_slot(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("hung", vec![timed("hung", "1s", 0)]).await;
    let mut worker = TestWorker::start(&engine, &["hung:t"], 1, |a| {
        if payload(a)["input"]["hang"] == true { Reply::Hold } else { Reply::Complete(json!({"done": true})) }
    })
    .await;
    worker.keep_alive(&engine);
    let hung = engine.trigger("hung", json!({"hang": true}), None).await;
    let start = worker.next_assignment().await;
    assert_eq!(start.action_type, pb::ActionType::StartStepRun as i32);
    let cancel = worker.next_assignment().await;
    assert_eq!(cancel.action_type, pb::ActionType::CancelStepRun as i32, "the worker is told to stop");
    assert_eq!(cancel.task_run_external_id, start.task_run_external_id);
    assert_eq!(cancel.retry_count, 0);
    let finished = engine.wait_finished(&hung).await;
    let error = finished.results[0].error.clone().expect("timed out");
    assert!(error.contains("timeout of 1s"), "{error}");
    // The one slot is free again: the next run proceeds.
    let next = engine.trigger("hung", json!({"hang": false}), None).await;
    assert_eq!(engine.wait_finished(&next).await.results[0].output.as_deref(), Some(r#"{"done":true}"#));
    // A late report of the timed-out attempt changes nothing.
    report(&engine, &worker.id, &start, pb::StepActionEventType::StepEventTypeCompleted, "{}", Some(0)).await;
    let details = engine.details(&hung).await;
    assert_eq!(details.status, sfp_protocol::pb::v1::RunStatus::Failed as i32);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_timed_out_task_with_retries_left_runs_again(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("slowfirst", vec![timed("slowfirst", "1s", 1)]).await;
    let worker = TestWorker::start(&engine, &["slowfirst:t"], 2, |a| {
        if a.retry_count == 0 { Reply::Hold } else { Reply::Complete(json!({"attempt": a.retry_count})) }
    })
    .await;
    worker.keep_alive(&engine);
    let run = engine.trigger("slowfirst", json!({}), None).await;
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"attempt":1}"#));
    let events: Vec<(i32, String)> = sqlx::query_as(
        "SELECT e.retry_count, e.event_type FROM engine.task_event e JOIN engine.task t ON t.id = e.task_id \
         WHERE t.run_id = $1::uuid AND e.event_type IN ('TIMED_OUT', 'COMPLETED') ORDER BY e.id",
    )
    .bind(&run)
    .fetch_all(&engine.pool)
    .await
    .unwrap();
    assert_eq!(events, vec![(0, "TIMED_OUT".into()), (1, "COMPLETED".into())]);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_lost_workers_task_runs_again_on_another_worker_without_spending_a_retry(pool: PgPool) {
    let engine = TestEngine::start_configured(pool, |c| c.heartbeat_timeout = Duration::from_secs(1)).await;
    engine.put_workflow("orphan", vec![timed("orphan", "60s", 0)]).await;
    let mut first = TestWorker::start(&engine, &["orphan:t"], 1, |_| Reply::Hold).await;
    first.keep_alive(&engine);
    let run = engine.trigger("orphan", json!({}), None).await;
    let held = first.next_assignment().await;
    assert_eq!(held.retry_count, 0);
    // The first worker dies: no stream, no heartbeats.
    first.disconnect();
    let second =
        TestWorker::start(&engine, &["orphan:t"], 1, |a| Reply::Complete(json!({"attempt": a.retry_count}))).await;
    second.keep_alive(&engine);
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"attempt":1}"#), "a new attempt, on the second worker");
    let (status, app_retries, worker): (String, i32, uuid::Uuid) =
        sqlx::query_as("SELECT status, app_retries, worker_id FROM engine.task WHERE run_id = $1::uuid")
            .bind(&run)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), app_retries), ("COMPLETED", 0), "worker loss spends no retry (retries = 0)");
    assert_eq!(worker.to_string(), second.id);
    // The lost attempt's late report is stale.
    report(&engine, &first.id, &held, pb::StepActionEventType::StepEventTypeFailed, "late", Some(0)).await;
    assert_eq!(engine.details(&run).await.status, sfp_protocol::pb::v1::RunStatus::Completed as i32);
    let active: bool = sqlx::query_scalar("SELECT is_active FROM engine.worker WHERE id = $1::uuid")
        .bind(&first.id)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert!(!active, "the lost worker is inactive");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_task_nobody_takes_fails_at_its_schedule_timeout(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut t = task("unclaimed", "t", &[]);
    t.schedule_timeout = Some("1s".into());
    engine.put_workflow("unclaimed", vec![t, task("unclaimed", "after", &["t"])]).await;
    let run = engine.trigger("unclaimed", json!({}), None).await;
    let finished = engine.wait_finished(&run).await;
    let by_name: std::collections::HashMap<_, _> =
        finished.results.iter().map(|r| (r.task_name.clone(), r.error.clone())).collect();
    assert!(by_name["t"].as_deref().unwrap().contains("schedule timeout of 1s"), "{by_name:?}");
    assert!(by_name["after"].as_deref().unwrap().contains("parent"), "{by_name:?}");
    assert_eq!(engine.details(&run).await.status, sfp_protocol::pb::v1::RunStatus::Failed as i32);
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.queue_item").fetch_one(&engine.pool).await.unwrap();
    assert_eq!(queued, 0);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn an_assignment_its_worker_never_starts_runs_again_elsewhere(pool: PgPool) {
    let engine = TestEngine::start_configured(pool, |c| c.start_timeout = Duration::from_secs(1)).await;
    engine.put_workflow("lost", vec![timed("lost", "60s", 0)]).await;
    // A worker that takes the assignment and never says STARTED (as if it never got it).
    let (_silent, _dispatcher, mut stream) = register_listening(&engine, "silent", &["lost:t"], 1).await;
    let run = engine.trigger("lost", json!({}), None).await;
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.action_type, pb::ActionType::StartStepRun as i32);
    let healthy =
        TestWorker::start(&engine, &["lost:t"], 1, |a| Reply::Complete(json!({"attempt": a.retry_count}))).await;
    let cancel = tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(cancel.action_type, pb::ActionType::CancelStepRun as i32, "the silent worker is told to drop it");
    assert_eq!(cancel.retry_count, 0);
    let finished = engine.wait_finished(&run).await;
    assert_eq!(finished.results[0].output.as_deref(), Some(r#"{"attempt":1}"#), "a new attempt ran: {finished:?}");
    let (worker, app_retries): (uuid::Uuid, i32) =
        sqlx::query_as("SELECT worker_id, app_retries FROM engine.task WHERE run_id = $1::uuid")
            .bind(&run)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(worker.to_string(), healthy.id);
    assert_eq!(app_retries, 0, "no retry spent (retries = 0 and yet it ran again)");
    let message: String = sqlx::query_scalar(
        "SELECT e.message FROM engine.task_event e JOIN engine.task t ON t.id = e.task_id \
         WHERE t.run_id = $1::uuid AND e.event_type = 'REQUEUED'",
    )
    .bind(&run)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert!(message.contains("did not start the task within 1s"), "{message}");
}
