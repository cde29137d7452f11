//! Data API benchmark (not a test): `cargo bench -p sfp-server --bench data_api`.
//!
//! Starts the real `sfp-server start` (embedded stack, its own PostgreSQL cluster in a
//! throwaway folder), signs in as the administrator, and measures through HTTP:
//! 1. an open-loop mixed load at a fixed rate (KV get, KV upsert, doc get, doc write, a
//!    quarter each) with latency p50/p99 per operation and overall;
//! 2. the closed-loop maximum with 32 concurrent clients;
//! 3. a selective document query over 1,000,000 documents (inserted with SQL), p50/p99;
//! 4. the server process's RSS (current and peak) under that load.
//!
//! It prints a machine reference first (a fixed CPU loop, `fdatasync` latency) so that runs
//! on different days can be compared. Diagnostics, all off by default:
//! `SFP_BENCH_SKIP_QUERY=1` (load figures only), `SFP_BENCH_SAMPLES=<folder>` (every
//! open-loop request with its send time, for a timeline), `SFP_BENCH_PG_SETTINGS="name=value;..."`
//! (PostgreSQL settings for the run), `SFP_BENCH_KEEP=1` (keep the folder, with
//! `postgres/postgres.log`) and `SFP_BENCH_SERVER_BIN=<path>` (another build of the server,
//! for an A/B in one sitting). Each load phase also reports what the machine did meanwhile
//! ([`MachineSampler`]: busy, iowait and steal time, CPU pressure, a napping thread's late
//! wake-ups), since a shared host's slow spells are not the code's.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

const RATES: [u64; 2] = [500, 2_000];
const MAX_IN_FLIGHT: usize = 256;
const OPEN_LOOP: Duration = Duration::from_secs(15);
const CLOSED_LOOP: Duration = Duration::from_secs(10);
const CLIENTS: usize = 32;
const KEYS: usize = 1_000;
const DOCS: i64 = 1_000_000;
const QUERIES: usize = 200;

#[derive(Clone, Copy, Debug)]
enum Op {
    KvGet,
    KvPut,
    DocGet,
    DocPut,
}

const OPS: [Op; 4] = [Op::KvGet, Op::KvPut, Op::DocGet, Op::DocPut];

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, op: Op, n: usize) -> bool {
        let k = n % KEYS;
        let request = match op {
            Op::KvGet => self.client.get(format!("{}/sfp/api/key-value/bench/k{k}", self.base)),
            Op::KvPut => self
                .client
                .post(format!("{}/sfp/api/key-value/upsert", self.base))
                .json(&json!({"key": format!("bench/k{k}"), "value": {"n": n}})),
            Op::DocGet => self.client.get(format!("{}/sfp/api/doc-store/docs/bench/d{k}", self.base)),
            Op::DocPut => self
                .client
                .post(format!("{}/sfp/api/doc-store/docs/bench/d{k}", self.base))
                .json(&json!({"value": {"n": n, "status": "open"}})),
        };
        matches!(request.bearer_auth(&self.token).send().await, Ok(r) if r.status().is_success())
    }
}

/// One request of the open loop: what, how long, whether it succeeded, when it was sent
/// (from the start of the loop).
type Sample = (Op, Duration, bool, Duration);

async fn open_loop(api: &Arc<Api>, rate: u64) {
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let (mut n, mut skipped) = (0usize, 0usize);
    let mut running = Vec::new();
    while started.elapsed() < OPEN_LOOP {
        tick.tick().await;
        n += 1;
        if in_flight.load(std::sync::atomic::Ordering::SeqCst) >= MAX_IN_FLIGHT {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (api, samples, op, in_flight) = (api.clone(), samples.clone(), OPS[n % 4], in_flight.clone());
        running.push(tokio::spawn(async move {
            let at = Instant::now();
            let ok = api.call(op, n).await;
            samples.lock().await.push((op, at.elapsed(), ok, at - started));
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    for r in running {
        r.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = samples.lock().await;
    let errors = samples.iter().filter(|s| !s.2).count();
    println!(
        "open_loop offered {rate} req/s: done {:.0} req/s, {errors} errors, {skipped} not sent (cap {MAX_IN_FLIGHT} in flight), {elapsed:.1} s",
        samples.len() as f64 / elapsed
    );
    let mut all: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    all.sort();
    // SFP_BENCH_SAMPLES=<folder>: every request (sent at, operation, latency) for a timeline.
    if let Some(folder) = std::env::var_os("SFP_BENCH_SAMPLES") {
        let lines: String =
            samples.iter().map(|s| format!("{} {:?} {} {}\n", s.3.as_micros(), s.0, s.1.as_micros(), s.2)).collect();
        std::fs::write(std::path::Path::new(&folder).join(format!("open-loop-{rate}.txt")), lines).unwrap();
    }
    println!("open_loop_ms at {rate}: all p50 {:.2} p99 {:.2}", percentile(&all, 0.5), percentile(&all, 0.99));
    for op in OPS {
        let mut d: Vec<Duration> = samples
            .iter()
            .filter(|s| std::mem::discriminant(&s.0) == std::mem::discriminant(&op))
            .map(|s| s.1)
            .collect();
        d.sort();
        println!("open_loop_ms at {rate}: {op:?} p50 {:.2} p99 {:.2}", percentile(&d, 0.5), percentile(&d, 0.99));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// CPU seconds (user + system) of a process.
fn cpu_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) in parentheses: utime is the 12th.
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds so far of the server, of every PostgreSQL process, and of this benchmark.
fn cpu(server: u32) -> [f64; 3] {
    let postgres: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|e| cpu_of(&e.file_name().to_string_lossy()))
        .sum();
    [cpu_of(&server.to_string()), postgres, cpu_of("self")]
}

fn print_cpu(phase: &str, before: [f64; 3], after: [f64; 3], wall: f64) {
    let share = |i: usize| (after[i] - before[i]) / wall;
    println!(
        "cpu during {phase} (cores busy): server {:.2}, postgres {:.2}, benchmark {:.2}",
        share(0),
        share(1),
        share(2)
    );
}

/// The whole machine's CPU time by state, from `/proc/stat`'s first line, in clock ticks:
/// busy (user, nice, system, irq, softirq), iowait, steal (time the hypervisor gave to
/// others, where the guest is told), idle.
fn machine_ticks() -> [u64; 4] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    [at(0) + at(1) + at(2) + at(5) + at(6), at(4), at(7), at(3)]
}

/// Watches the machine while a phase runs: `/proc/stat` at both ends, and a thread that
/// sleeps 1 ms at a time and records how late it wakes. A late wake-up of that mostly idle
/// thread is a stall of the whole guest (the hypervisor ran something else, which a
/// Firecracker guest does not report as steal) or CPU queueing, not our code.
struct MachineSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    ticks: [u64; 4],
    thread: std::thread::JoinHandle<Vec<Late>>,
    stalled: u64,
}

/// A late wake-up of the sampler: when, how late, and how much of that it spent runnable but
/// waiting for a CPU of this machine (the rest is time the guest did not run at all, or
/// timer delay).
struct Late {
    at: Duration,
    over: Duration,
    queued: Duration,
}

/// Nanoseconds this thread has waited on a run queue (`/proc/thread-self/schedstat`).
fn queued_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    stat.split_whitespace().nth(1).and_then(|w| w.parse().ok()).unwrap_or(0)
}

/// Microseconds in which some runnable task waited for a CPU (`/proc/pressure/cpu`).
fn cpu_stalled_us() -> u64 {
    let pressure = std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    let some = pressure.lines().next().unwrap_or("");
    some.split_whitespace().find_map(|f| f.strip_prefix("total=")).and_then(|t| t.parse().ok()).unwrap_or(0)
}

const NAP: Duration = Duration::from_millis(1);
/// A wake-up later than this is kept (when, how late).
const LATE: Duration = Duration::from_micros(500);

impl MachineSampler {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut late = Vec::new();
            let mut queued = queued_ns();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                std::thread::sleep(NAP);
                let over = at.elapsed().saturating_sub(NAP);
                let now_queued = queued_ns();
                if over > LATE {
                    late.push(Late { at: at - started, over, queued: Duration::from_nanos(now_queued - queued) });
                }
                queued = now_queued;
            }
            late
        });
        MachineSampler { stop, started: Instant::now(), ticks: machine_ticks(), thread, stalled: cpu_stalled_us() }
    }

    /// Prints the phase's busy, iowait and steal shares (in cores) and the sampler's late
    /// wake-ups; with `SFP_BENCH_SAMPLES` also writes those (`late-wakeups-<phase>.txt`).
    fn finish(self, phase: &str) {
        let wall = self.started.elapsed().as_secs_f64();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let late = self.thread.join().unwrap();
        let ticks = machine_ticks();
        let share = |i: usize| (ticks[i] - self.ticks[i]) as f64 / 100.0 / wall;
        let stalled = (cpu_stalled_us() - self.stalled) as f64 / 1e6 / wall;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let over = |min_ms: f64| late.iter().filter(|l| ms(l.over) > min_ms).collect::<Vec<_>>();
        let (late_1, late_3) = (over(1.0), over(3.0));
        let lost = |l: &[&Late]| l.iter().map(|l| ms(l.over)).sum::<f64>();
        let queued = |l: &[&Late]| l.iter().map(|l| ms(l.queued.min(l.over))).sum::<f64>();
        println!(
            "machine during {phase}: cores busy {:.2}, iowait {:.2}, steal {:.2}; some task waiting for a CPU {:.0}% of the time",
            share(0),
            share(1),
            share(2),
            stalled * 100.0
        );
        println!(
            "machine during {phase}: a 1 ms nap woke > 1 ms late {} times ({:.0} ms late in all, {:.0} ms of it waiting for a CPU), > 3 ms {} times ({:.0} ms, {:.0} ms waiting), at worst {:.1} ms",
            late_1.len(),
            lost(&late_1),
            queued(&late_1),
            late_3.len(),
            lost(&late_3),
            queued(&late_3),
            late.iter().map(|l| ms(l.over)).fold(0.0, f64::max)
        );
        if let Some(folder) = std::env::var_os("SFP_BENCH_SAMPLES") {
            let lines: String = late
                .iter()
                .map(|l| format!("{} {} {}\n", l.at.as_micros(), l.over.as_micros(), l.queued.as_micros()))
                .collect();
            let name = format!("late-wakeups-{}.txt", phase.replace(' ', "-").replace(['/', ','], ""));
            std::fs::write(std::path::Path::new(&folder).join(name), lines).unwrap();
        }
    }
}

fn memory(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or("?").trim().to_owned()
}

/// The machine's own speed, to compare runs on different days (the same nominal machine
/// has been up to three times faster one day than another): a fixed single-threaded loop,
/// and 500 `fdatasync`s of an 8 KB write in the benchmark's folder.
fn machine_reference(dir: &std::path::Path) {
    let at = Instant::now();
    let mut x: u64 = 1;
    for i in 0..200_000_000u64 {
        x = (x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i)) ^ (x >> 29);
    }
    std::hint::black_box(x);
    let cpu_ms = at.elapsed().as_secs_f64() * 1000.0;
    let file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = vec![7u8; 8192];
    let mut syncs = Vec::with_capacity(500);
    for _ in 0..500 {
        std::os::unix::fs::FileExt::write_all_at(&file, &block, 0).unwrap();
        let at = Instant::now();
        file.sync_data().unwrap();
        syncs.push(at.elapsed());
    }
    syncs.sort();
    drop(file);
    let _ = std::fs::remove_file(dir.join("fsync-probe"));
    println!(
        "machine reference: loop {cpu_ms:.0} ms (one thread), fdatasync of 8 KB p50 {:.2} p99 {:.2} ms",
        percentile(&syncs, 0.5),
        percentile(&syncs, 0.99)
    );
}

// One thread for the load generator: it shares the two cores with the server and PostgreSQL,
// and on one thread it keeps about 0.14 of a core busy at 2,000 req/s instead of 0.20
// (BENCHMARKS.md, session 9).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut dir = tempfile::Builder::new().prefix("sfp-data-bench-").tempdir().unwrap();
    if std::env::var_os("SFP_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("keeping {}", dir.path().display());
    }
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    machine_reference(dir.path());
    // SFP_BENCH_SERVER_BIN=<path>: another build of the server (an A/B in one sitting).
    let bin_override = std::env::var("SFP_BENCH_SERVER_BIN").ok();
    let bin = bin_override.as_deref().unwrap_or(env!("CARGO_BIN_EXE_sfp-server"));
    let mut server = Command::new(bin)
        .args(["start", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sfp-server");
    let mut base = String::new();
    for line in BufReader::new(server.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("ready: ") {
            base = url.to_owned();
            break;
        }
    }
    assert!(!base.is_empty(), "sfp-server did not start");
    let pid = server.id();
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("admin-credentials.json")).unwrap()).unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    let login: Value = client
        .post(format!("{base}/sfp/api/auth/admin/login"))
        .json(&json!({"email": creds["email"], "password": creds["password"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("a token").to_owned();
    let api = Arc::new(Api { client, base: base.clone(), token });
    for k in 0..KEYS {
        assert!(api.call(Op::KvPut, k).await && api.call(Op::DocPut, k).await, "seeding");
    }
    let url =
        String::from_utf8(Command::new(bin).args(["db", "url", "--data-dir"]).arg(dir.path()).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
    // SFP_BENCH_PG_SETTINGS="name=value;...": PostgreSQL settings for this run (ALTER SYSTEM,
    // then a reload), for instance `log_autovacuum_min_duration=0` to see what the database
    // did during a slow second; SFP_BENCH_KEEP=1 keeps the folder (and postgres.log) after.
    if let Ok(settings) = std::env::var("SFP_BENCH_PG_SETTINGS") {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        for setting in settings.split(';').filter(|s| !s.is_empty()) {
            let (name, value) = setting.split_once('=').expect("name=value");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "a setting's name: {name}");
            let sql = format!("ALTER SYSTEM SET {name} = '{}'", value.replace('\'', "''"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
        }
        sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await.unwrap();
    }
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();

    // 1. Open loop at fixed rates; at most MAX_IN_FLIGHT requests outstanding (a tick that
    // finds the cap reached is counted as not sent, so an overloaded server shows up as a
    // shortfall instead of an ever-growing client).
    for rate in RATES {
        println!("open loop at {rate} req/s starts at unix time {:.3}", unix_now());
        let (before, at, machine) = (cpu(pid), Instant::now(), MachineSampler::start());
        open_loop(&api, rate).await;
        machine.finish(&format!("{rate} req/s"));
        print_cpu(&format!("{rate} req/s"), before, cpu(pid), at.elapsed().as_secs_f64());
        println!("server_rss_under_load {} (peak {})", memory(pid, "VmRSS:"), memory(pid, "VmHWM:"));
    }

    // 2. Closed loop: as fast as CLIENTS clients go.
    let (before, machine) = (cpu(pid), MachineSampler::start());
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        let api = api.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut i = c;
            while started.elapsed() < CLOSED_LOOP {
                api.call(OPS[i % 4], i).await;
                done += 1;
                i += CLIENTS;
            }
            done
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    println!("closed_loop_req_per_s {:.0} ({CLIENTS} clients, mixed)", total as f64 / started.elapsed().as_secs_f64());
    machine.finish("the closed loop");
    print_cpu("the closed loop", before, cpu(pid), started.elapsed().as_secs_f64());
    // How many writes went to PostgreSQL together (group commit, `api/write_batch.rs`).
    let metrics = api.client.get(format!("{base}/metrics")).bearer_auth(&api.token).send().await.unwrap();
    for line in metrics.text().await.unwrap().lines().filter(|l| l.starts_with("sfp_write_batch")) {
        println!("{line}");
    }
    // SFP_BENCH_SKIP_QUERY=1: the load figures only (a quicker run while tuning).
    if std::env::var_os("SFP_BENCH_SKIP_QUERY").is_some() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = server.wait();
        return;
    }

    // 3. A selective query over 1,000,000 documents.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let loading = Instant::now();
    sqlx::query("INSERT INTO app.doc_collection (name) VALUES ('perf') ON CONFLICT DO NOTHING")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO app.doc (key, collection, value) \
         SELECT 'perf/d' || i, 'perf', jsonb_build_object('status', (ARRAY['open','done','failed'])[i % 3 + 1], \
                'build', i, 'env', 'e' || (i % 100), 'owner', 'u' || (i % 1000)) \
         FROM generate_series(1, $1) AS i",
    )
    .bind(DOCS)
    .execute(&pool)
    .await
    .unwrap();
    // What autovacuum would have done by the time a real store holds a million documents:
    // without it the first reads of each fresh row also write (hint bits) and compete with
    // autovacuum starting on the table.
    sqlx::query("VACUUM (ANALYZE) app.doc").execute(&pool).await.unwrap();
    println!("loaded {DOCS} documents in {:.1} s", loading.elapsed().as_secs_f64());
    let mut latencies = Vec::with_capacity(QUERIES);
    let mut matched = 0;
    for q in 0..QUERIES {
        let body = json!({"collections": ["perf"], "limit": 50,
            "filter": [{"path": "owner", "op": "eq", "value": format!("u{}", q % 1000)}, {"path": "status", "op": "eq", "value": "done"}]});
        let at = Instant::now();
        let page: Value = api
            .client
            .post(format!("{base}/sfp/api/doc-store/query"))
            .bearer_auth(&api.token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        latencies.push(at.elapsed());
        matched += page["items"].as_array().map_or(0, Vec::len);
    }
    latencies.sort();
    println!(
        "doc_query_1m_ms p50 {:.2} p99 {:.2} ({QUERIES} queries: owner = u<n> and status = done, 50 per page, {} rows returned)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        matched
    );
    println!("server_rss_end {} (peak {})", memory(pid, "VmRSS:"), memory(pid, "VmHWM:"));
    pool.close().await;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = server.wait();
}
