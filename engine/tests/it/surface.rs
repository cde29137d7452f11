//! The protocol surface: authentication, versions, validation, the REST run shape.

use serde_json::{Value, json};
use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use sqlx::PgPool;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::*;

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn calls_without_a_valid_token_are_refused(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut anonymous = pb::dispatcher_client::DispatcherClient::new(engine.channel.clone());
    let err = anonymous.get_version(pb::GetVersionRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let forged = sfp_protocol::token::TokenKey::new(b"not-the-engine-key-not-the-key!!")
        .mint(uuid::Uuid::new_v4(), "http://x", "x:1", std::time::Duration::from_secs(60))
        .unwrap();
    let mut client = pb::dispatcher_client::DispatcherClient::with_interceptor(
        engine.channel.clone(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", format!("Bearer {forged}").parse().unwrap());
            Ok(r)
        },
    );
    assert_eq!(client.get_version(pb::GetVersionRequest {}).await.unwrap_err().code(), Code::Unauthenticated);

    let rest = reqwest::Client::new().get(format!("{}/api/v1/version", engine.rest_url)).send().await.unwrap();
    assert_eq!(rest.status(), 401);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_version_keeps_sdks_on_the_current_protocol(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let version = engine.dispatcher().get_version(pb::GetVersionRequest {}).await.unwrap().into_inner().version;
    let parse = |v: &str| -> Vec<u32> { v.trim_start_matches('v').split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(parse(&version) >= parse("v0.78.23") && parse(&version) < parse("v0.80.0"), "{version}");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn invalid_definitions_and_unknown_workflows_are_clear_errors(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let cyclic = pbv1::CreateWorkflowVersionRequest {
        name: "cyc".into(),
        tasks: vec![task("cyc", "a", &["b"]), task("cyc", "b", &["a"])],
        ..Default::default()
    };
    let err = engine.admin().put_workflow(cyclic).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cycle"), "{}", err.message());

    let req = pbv1::TriggerWorkflowRequest { name: "nope".into(), input: "{}".into(), ..Default::default() };
    let err = engine.workflows().trigger_workflow(req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"));

    engine.put_workflow("ok", vec![task("ok", "t", &[])]).await;
    let req = pbv1::TriggerWorkflowRequest { name: "ok".into(), input: "{oops".into(), ..Default::default() };
    let err = engine.workflows().trigger_workflow(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("input"));
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.workflow_run").fetch_one(&engine.pool).await.unwrap();
    assert_eq!(runs, 0, "nothing half-written");

    let err = engine
        .admin()
        .get_run_details(pbv1::GetRunDetailsRequest { external_id: "not-a-uuid".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn registering_the_same_definition_twice_keeps_one_version(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let req = || pbv1::CreateWorkflowVersionRequest {
        name: "v".into(),
        tasks: vec![task("v", "t", &[])],
        ..Default::default()
    };
    let a = engine.admin().put_workflow(req()).await.unwrap().into_inner();
    let b = engine.admin().put_workflow(req()).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);
    let mut changed = req();
    changed.tasks[0].retries = 3;
    let c = engine.admin().put_workflow(changed).await.unwrap().into_inner();
    assert_ne!(a.id, c.id);
    assert_eq!(a.workflow_id, c.workflow_id);
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn the_rest_run_view_has_the_shape_the_rust_sdk_parses(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    engine.put_workflow("shape", vec![task("shape", "a", &[]), task("shape", "b", &["a"])]).await;
    let _worker =
        TestWorker::start(&engine, &["shape:a", "shape:b"], 2, |a| Reply::Complete(json!({"from": a.task_name}))).await;
    let run = engine.trigger("shape", json!({"x": 1}), None).await;
    engine.wait_finished(&run).await;
    let body = engine.rest_get(&format!("/api/v1/stable/workflow-runs/{run}")).await;
    let r = &body["run"];
    assert_eq!(r["status"], "COMPLETED");
    assert_eq!(r["errorMessage"], "", "always a string");
    for key in ["tenantId", "workflowId"] {
        uuid::Uuid::parse_str(r[key].as_str().unwrap()).unwrap();
    }
    assert_eq!(r["metadata"]["id"], run.as_str());
    assert!(body["taskEvents"].is_array() && body["shape"].is_array());
    let tasks = body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let b = tasks.iter().find(|t| t["displayName"] == "b").unwrap();
    assert_eq!(b["actionId"], "shape:b");
    assert_eq!(b["input"]["parents"]["a"], json!({"from": "a"}));
    assert!(b["input"]["triggers"]["filter_payload"].is_object());
    assert_eq!(b["output"], json!({"from": "b"}));
    assert!(b["taskId"].is_i64());
    for key in ["taskExternalId", "tenantId", "workflowId", "workflowRunExternalId"] {
        uuid::Uuid::parse_str(b[key].as_str().unwrap()).unwrap();
    }

    let missing = reqwest::Client::new()
        .get(format!("{}/api/v1/stable/workflow-runs/{}", engine.rest_url, uuid::Uuid::new_v4()))
        .bearer_auth(&engine.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn shutdown_ends_open_streams_instead_of_waiting_for_them(pool: PgPool) {
    let mut engine = TestEngine::start(pool).await;
    engine.put_workflow("idle", vec![task("idle", "t", &[])]).await;
    let mut worker = TestWorker::start(&engine, &["idle:t"], 1, |_| Reply::Hold).await;
    let run = engine.trigger("idle", json!({}), None).await;
    worker.next_assignment().await;
    // A client waiting for the run, and a worker holding its stream open.
    let request = tokio_stream::iter(vec![pb::SubscribeToWorkflowRunsRequest { workflow_run_id: run }])
        .chain(tokio_stream::pending());
    let mut subscription = engine.dispatcher().subscribe_to_workflow_runs(request).await.unwrap().into_inner();
    assert!(engine.shut_down().await, "the engine stopped although streams were open");
    let ended = tokio::time::timeout(PATIENCE, subscription.message()).await.expect("subscription answered");
    assert!(!matches!(ended, Ok(Some(_))), "the subscription ended without a result: {ended:?}");
}

#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn bad_worker_event_and_bulk_requests_are_refused_by_name(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    let mut dispatcher = engine.dispatcher();
    let both = pb::WorkerRegisterRequest {
        worker_name: "w".into(),
        actions: vec!["a:b".into()],
        slots: Some(2),
        slot_config: [("default".to_string(), 2)].into(),
        ..Default::default()
    };
    let err = dispatcher.register(both).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("slot_config"), "{}", err.message());
    let nameless = pb::WorkerRegisterRequest { actions: vec!["a:b".into()], ..Default::default() };
    assert!(dispatcher.register(nameless).await.unwrap_err().message().contains("worker_name"));
    let no_slots = pb::WorkerRegisterRequest { worker_name: "w".into(), slots: Some(0), ..Default::default() };
    assert!(dispatcher.register(no_slots).await.unwrap_err().message().contains("slot"));

    let unknown = uuid::Uuid::new_v4().to_string();
    let err = dispatcher
        .heartbeat(pb::HeartbeatRequest { worker_id: unknown.clone(), heartbeat_at: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = dispatcher.listen_v2(pb::WorkerListenRequest { worker_id: unknown }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err =
        dispatcher.heartbeat(pb::HeartbeatRequest { worker_id: "w-1".into(), heartbeat_at: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = engine
        .events()
        .push(pb::PushEventRequest { key: " ".into(), payload: "{}".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("key"), "{}", err.message());
    let err = engine
        .events()
        .push(pb::PushEventRequest { key: "k".into(), payload: "[oops".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("payload"), "{}", err.message());

    engine.put_workflow("bulk", vec![task("bulk", "t", &[])]).await;
    let err = engine
        .workflows()
        .bulk_trigger_workflow(pb::BulkTriggerWorkflowRequest { workflows: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // One bad trigger in a batch rejects the whole batch: nothing half-written.
    let good = pbv1::TriggerWorkflowRequest { name: "bulk".into(), input: "{}".into(), ..Default::default() };
    let bad = pbv1::TriggerWorkflowRequest { name: "missing".into(), input: "{}".into(), ..Default::default() };
    let err = engine
        .workflows()
        .bulk_trigger_workflow(pb::BulkTriggerWorkflowRequest { workflows: vec![good.clone(), bad] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let wrong_priority = pbv1::TriggerWorkflowRequest { priority: Some(7), ..good };
    assert_eq!(engine.workflows().trigger_workflow(wrong_priority).await.unwrap_err().code(), Code::InvalidArgument);
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM engine.workflow_run").fetch_one(&engine.pool).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM engine.event").fetch_one(&engine.pool).await.unwrap();
    assert_eq!((runs, events), (0, 0), "refused requests left nothing behind");
}

/// A trigger racing the registration of its workflow either starts a run or answers
/// NOT_FOUND ("not registered", which SDKs retry), never a database error.
#[sqlx::test(migrator = "sfp_postgres::MIGRATOR")]
async fn a_trigger_racing_registration_is_refused_cleanly_or_runs(pool: PgPool) {
    let engine = TestEngine::start(pool).await;
    for round in 0..20 {
        let name = format!("racing-{round}");
        let register = {
            let name = name.clone();
            let mut admin = engine.admin();
            tokio::spawn(async move {
                let req = pbv1::CreateWorkflowVersionRequest {
                    name: name.clone(),
                    tasks: vec![task(&name, "t", &[])],
                    ..Default::default()
                };
                admin.put_workflow(req).await.unwrap();
            })
        };
        let mut started = None;
        for _ in 0..2000 {
            let req = pbv1::TriggerWorkflowRequest { name: name.clone(), input: "{}".into(), ..Default::default() };
            match engine.workflows().trigger_workflow(req).await {
                Ok(r) => {
                    started = Some(r.into_inner().workflow_run_id);
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::NotFound, "round {round}: {status:?}");
                    assert!(status.message().contains("not registered"), "{status:?}");
                }
            }
        }
        register.await.unwrap();
        assert!(started.is_some(), "round {round}: the trigger succeeds once the workflow exists");
    }
}
