//! Engine benchmark (not a test): `cargo bench -p sfp-engine --bench engine`.
//!
//! Starts `sfp-engine serve` as its own process on a throwaway PostgreSQL cluster
//! (`synchronous_commit = on`) and drives it over gRPC with a no-op worker, like a real
//! deployment. Prints one line per figure; BENCHMARKS.md records them with the machine.
//!
//! Figures: no-op task throughput end to end (trigger -> worker -> completed), trigger-to-start
//! latency p50/p99 on a hot worker, a 3-task DAG's throughput, a 40-step sequential chain's
//! wall time, the engine process's peak RSS; then a backlog: bulk enqueue rate of 100,000
//! tasks nobody serves yet, RSS and trigger-to-start latency (of other work) with them
//! queued, the time to drain them once a worker serves them, and the queue tables' dead
//! tuples after the drain (and after autovacuum has had its chance).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sfp_protocol::pb;
use sfp_protocol::pb::v1 as pbv1;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;
type Dispatcher = pb::dispatcher_client::DispatcherClient<InterceptedService<Channel, Auth>>;

const NOOP_RUNS: usize = 10_000;
const DAG_RUNS: usize = 2_000;
const LATENCY_SAMPLES: usize = 500;
const CHAIN: usize = 40;
const SLOTS: i32 = 500;
const BACKLOG: usize = 100_000;
const BULK: usize = 1_000;
const ENQUEUERS: usize = 4;

struct Client {
    channel: Channel,
    token: String,
}

impl Client {
    fn auth(&self) -> Auth {
        let value: MetadataValue<_> = format!("Bearer {}", self.token).parse().unwrap();
        Box::new(move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", value.clone());
            Ok(r)
        })
    }
    fn dispatcher(&self) -> Dispatcher {
        pb::dispatcher_client::DispatcherClient::with_interceptor(self.channel.clone(), self.auth())
    }
    fn admin(&self) -> pbv1::admin_service_client::AdminServiceClient<InterceptedService<Channel, Auth>> {
        pbv1::admin_service_client::AdminServiceClient::with_interceptor(self.channel.clone(), self.auth())
    }
    fn workflows(&self) -> pb::workflow_service_client::WorkflowServiceClient<InterceptedService<Channel, Auth>> {
        pb::workflow_service_client::WorkflowServiceClient::with_interceptor(self.channel.clone(), self.auth())
    }
}

fn task(workflow: &str, id: &str, parents: &[String]) -> pbv1::CreateTaskOpts {
    pbv1::CreateTaskOpts {
        readable_id: id.into(),
        action: format!("{workflow}:{id}"),
        timeout: "60s".into(),
        parents: parents.to_vec(),
        ..Default::default()
    }
}

/// Completed runs counted by the worker (a run is done when its last task completes).
#[derive(Default)]
struct Progress {
    completed_tasks: AtomicU64,
}

#[tokio::main]
async fn main() {
    let dir = tempfile::Builder::new().prefix("sfp-engine-bench-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let engine_bin = env!("CARGO_BIN_EXE_sfp-engine");
    let data = dir.path().join("engine");
    let mut engine = Command::new(engine_bin)
        .args(["serve", "--grpc-port", "0", "--api-port", "0", "--log-level", "warn", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sfp-engine");
    let mut lines = BufReader::new(engine.stdout.take().unwrap()).lines();
    let mut grpc = String::new();
    let mut api = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("grpc: ") {
            grpc = v.to_owned();
        } else if let Some(v) = line.strip_prefix("api: ") {
            api = v.to_owned();
        } else if line.starts_with("ready: ") {
            break;
        }
    }
    let token = String::from_utf8(
        Command::new(engine_bin)
            .args(["token", "create", "--grpc-address", &grpc, "--server-url", &api, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let client = Arc::new(Client { channel, token });

    let mut chain_tasks = Vec::new();
    for i in 0..CHAIN {
        let parents = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
        chain_tasks.push(task("chain", &format!("s{i}"), &parents));
    }
    let definitions = vec![
        ("noop", vec![task("noop", "t", &[])]),
        ("backlog", vec![task("backlog", "t", &[])]),
        ("dag3", vec![task("dag3", "a", &[]), task("dag3", "b", &["a".into()]), task("dag3", "c", &["a".into()])]),
        ("chain", chain_tasks),
    ];
    let mut actions = Vec::new();
    for (name, tasks) in definitions {
        // The backlog's action is served later, by a worker of its own.
        actions.extend(tasks.iter().map(|t| t.action.clone()).filter(|a| a != "backlog:t"));
        let req = pbv1::CreateWorkflowVersionRequest { name: name.into(), tasks, ..Default::default() };
        client.admin().put_workflow(req).await.unwrap();
    }

    let progress = Arc::new(Progress::default());
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    start_worker(client.clone(), actions, progress.clone(), started_tx).await;

    // 1. No-op throughput.
    let started = Instant::now();
    trigger_bulk(&client, "noop", NOOP_RUNS).await;
    wait_tasks(&progress, NOOP_RUNS as u64).await;
    let elapsed = started.elapsed();
    println!(
        "noop_throughput_tasks_per_s {:.0} ({NOOP_RUNS} runs in {:.2} s, {SLOTS} slots)",
        NOOP_RUNS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    while started_rx.try_recv().is_ok() {}

    // 2. Trigger-to-start latency on a hot worker, one run at a time.
    let (p50, p99) = latency(&client, &mut started_rx, LATENCY_SAMPLES).await;
    println!("trigger_to_start_ms p50 {p50:.2} p99 {p99:.2} ({LATENCY_SAMPLES} sequential triggers)");
    let base = progress.completed_tasks.load(Ordering::SeqCst);

    // 3. A 3-task DAG's throughput.
    let started = Instant::now();
    trigger_bulk(&client, "dag3", DAG_RUNS).await;
    wait_tasks(&progress, base + (DAG_RUNS * 3) as u64).await;
    let elapsed = started.elapsed();
    println!(
        "dag3_runs_per_s {:.0} ({DAG_RUNS} runs of 3 tasks in {:.2} s)",
        DAG_RUNS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let base = progress.completed_tasks.load(Ordering::SeqCst);

    // 4. A 40-step sequential chain.
    let started = Instant::now();
    trigger_bulk(&client, "chain", 1).await;
    wait_tasks(&progress, base + CHAIN as u64).await;
    println!("chain40_wall_s {:.3}", started.elapsed().as_secs_f64());

    // 5. The engine process's peak resident memory.
    println!("engine_peak_rss {}", memory(engine.id(), "VmHWM:"));

    // 6. Bulk enqueue of a backlog nobody serves yet, from a few clients at once.
    let started = Instant::now();
    let mut enqueuers = Vec::new();
    for _ in 0..ENQUEUERS {
        let client = client.clone();
        enqueuers
            .push(tokio::spawn(async move { trigger_batches(&client, "backlog", BACKLOG / ENQUEUERS, BULK).await }));
    }
    for e in enqueuers {
        e.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "bulk_enqueue_tasks_per_s {:.0} ({BACKLOG} tasks in {:.2} s, {ENQUEUERS} clients, {BULK} per BulkTriggerWorkflow)",
        BACKLOG as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!("engine_rss_with_backlog {} (peak {})", memory(engine.id(), "VmRSS:"), memory(engine.id(), "VmHWM:"));

    // 7. Trigger-to-start latency of other work while the backlog waits.
    while started_rx.try_recv().is_ok() {}
    let (p50, p99) = latency(&client, &mut started_rx, LATENCY_SAMPLES).await;
    println!("trigger_to_start_ms_with_backlog p50 {p50:.2} p99 {p99:.2} ({BACKLOG} tasks queued for another action)");

    // 8. Drain: a worker for the backlog's action comes.
    let base = progress.completed_tasks.load(Ordering::SeqCst);
    let (drain_tx, _drain_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let started = Instant::now();
    start_worker(client.clone(), vec!["backlog:t".into()], progress.clone(), drain_tx).await;
    wait_tasks(&progress, base + BACKLOG as u64).await;
    let elapsed = started.elapsed();
    println!(
        "backlog_drain_tasks_per_s {:.0} ({BACKLOG} queued tasks done in {:.2} s)",
        BACKLOG as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!("engine_rss_after_drain {} (peak {})", memory(engine.id(), "VmRSS:"), memory(engine.id(), "VmHWM:"));

    // 9. Dead tuples in the queue tables: right after the drain, then once autovacuum ran.
    let cluster = sfp_postgres::Cluster::find(sfp_postgres::ClusterOptions {
        database: "sfp_engine".into(),
        ..sfp_postgres::ClusterOptions::new(data.join("postgres"))
    })
    .await
    .unwrap()
    .expect("the engine's cluster");
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    println!("bloat_after_drain {}", bloat(&pool).await);
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut waited = Duration::ZERO;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        waited += Duration::from_secs(5);
        if dead_queue_tuples(&pool).await < 1_000 {
            break;
        }
    }
    println!("bloat_after_autovacuum {} (waited {} s)", bloat(&pool).await, waited.as_secs());

    // 10. Peers on the same cluster, each in a fresh database, one after the other.
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers");
    if std::path::Path::new(peers).join("node_modules").is_dir() {
        for (script, database) in [("graphile.js", "peer_graphile"), ("pgboss.js", "peer_pgboss")] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&pool).await.unwrap();
            let status = Command::new("node")
                .arg(script)
                .current_dir(peers)
                .env("DATABASE_URL", cluster.url_for(database))
                .env("BACKLOG", BACKLOG.to_string())
                .status()
                .expect("node");
            assert!(status.success(), "{script} failed");
        }
    } else {
        println!("peers: skipped (npm ci in engine/benches/peers first)");
    }
    pool.close().await;

    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(engine.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = engine.wait();
}

async fn trigger_bulk(client: &Client, name: &str, count: usize) {
    trigger_batches(client, name, count, 500).await
}

async fn trigger_batches(client: &Client, name: &str, count: usize, per_call: usize) {
    let mut workflows = client.workflows();
    let mut left = count;
    while left > 0 {
        let n = left.min(per_call);
        let batch = (0..n)
            .map(|_| pbv1::TriggerWorkflowRequest { name: name.into(), input: "{}".into(), ..Default::default() })
            .collect();
        workflows.bulk_trigger_workflow(pb::BulkTriggerWorkflowRequest { workflows: batch }).await.unwrap();
        left -= n;
    }
}

/// Trigger-to-start latency (p50, p99 in ms) of `samples` sequential no-op triggers.
async fn latency(
    client: &Client,
    started_rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    samples: usize,
) -> (f64, f64) {
    let mut measured = Vec::with_capacity(samples);
    let mut workflows = client.workflows();
    for _ in 0..samples {
        let before = Instant::now();
        let req = pbv1::TriggerWorkflowRequest { name: "noop".into(), input: "{}".into(), ..Default::default() };
        let run = workflows.trigger_workflow(req).await.unwrap().into_inner().workflow_run_id;
        loop {
            let (id, at) = started_rx.recv().await.unwrap();
            if id == run {
                measured.push(at.duration_since(before));
                break;
            }
        }
    }
    measured.sort();
    let pct = |p: f64| measured[((measured.len() as f64 * p) as usize).min(measured.len() - 1)].as_secs_f64() * 1000.0;
    (pct(0.50), pct(0.99))
}

/// A memory line of /proc/<pid>/status (VmRSS, VmHWM), e.g. "23456 kB".
fn memory(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or("?").trim().to_owned()
}

const CHURN_TABLES: &str = "'queue_item', 'task_runtime', 'retry_queue_item'";

/// Live and dead tuples and total size of the engine's busiest tables.
async fn bloat(pool: &sqlx::PgPool) -> String {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT relname::text, n_live_tup, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables \
         WHERE schemaname = 'engine' AND relname IN ({CHURN_TABLES}, 'task', 'task_event') ORDER BY relname"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|(t, live, dead, size)| format!("{t}: live {live} dead {dead} {} kB", size / 1024))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn dead_queue_tuples(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables \
         WHERE schemaname = 'engine' AND relname IN ({CHURN_TABLES})"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_tasks(progress: &Progress, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while progress.completed_tasks.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the benchmark stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker that completes every task at once, with up to SLOTS reports in flight.
async fn start_worker(
    client: Arc<Client>,
    actions: Vec<String>,
    progress: Arc<Progress>,
    started: mpsc::UnboundedSender<(String, Instant)>,
) {
    let mut dispatcher = client.dispatcher();
    let worker_id = dispatcher
        .register(pb::WorkerRegisterRequest {
            worker_name: "bench".into(),
            actions,
            slots: Some(SLOTS),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let mut stream =
        dispatcher.listen_v2(pb::WorkerListenRequest { worker_id: worker_id.clone() }).await.unwrap().into_inner();
    // Heartbeats like an SDK worker, so the engine never takes it for lost.
    let mut beats = client.dispatcher();
    let beating = worker_id.clone();
    tokio::spawn(async move {
        loop {
            let beat = pb::HeartbeatRequest { worker_id: beating.clone(), heartbeat_at: None };
            if beats.heartbeat(beat).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(action)) = stream.message().await {
            let _ = started.send((action.workflow_run_id.clone(), Instant::now()));
            // Channels multiplex over one HTTP/2 connection; a client per report is cheap.
            let mut reporter = client.dispatcher();
            let progress = progress.clone();
            let worker_id = worker_id.clone();
            tokio::spawn(async move {
                let event = pb::StepActionEvent {
                    worker_id,
                    task_run_external_id: action.task_run_external_id,
                    action_id: action.action_id,
                    event_type: pb::StepActionEventType::StepEventTypeCompleted as i32,
                    event_payload: "{}".into(),
                    retry_count: Some(action.retry_count),
                    ..Default::default()
                };
                reporter.send_step_action_event(event).await.unwrap();
                progress.completed_tasks.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
}
