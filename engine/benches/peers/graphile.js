// graphile-worker 0.17.3 on the benchmark's PostgreSQL: bulk enqueue of N no-op jobs with
// one addJobs call per batch, then the time to drain them with the vendor's batched
// settings (localQueue, batched completion), and add_job -> start latency on an idle worker.
// Prints lines in the engine benchmark's format.
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

// Its default logger prints a line per job; a benchmark of a queue should not time a terminal.
const logger = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

const url = process.env.DATABASE_URL;
const N = Number(process.env.BACKLOG || 100000);
const BATCH = 1000;

async function main() {
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  await utils.migrate();
  let started = process.hrtime.bigint();
  for (let left = N; left > 0; left -= BATCH) {
    const n = Math.min(BATCH, left);
    await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
  }
  let seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`graphile_bulk_enqueue_jobs_per_s ${(N / seconds).toFixed(0)} (${N} jobs in ${seconds.toFixed(2)} s, ${BATCH} per addJobs)`);

  let done = 0;
  let finish;
  const drained = new Promise((r) => (finish = r));
  const samples = [];
  let waiting = null;
  started = process.hrtime.bigint();
  // The vendor's batched settings (localQueue and batched completion), in graphile-worker
  // 0.17's preset form (the flat options are ignored for these).
  const runner = await run({
    noHandleSignals: true,
    logger,
    preset: {
      worker: {
        connectionString: url,
        concurrentJobs: 24,
        maxPoolSize: 25,
        pollInterval: 1000,
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    },
    taskList: {
      noop: async () => {
        done += 1;
        if (done === N) finish();
      },
      probe: async (payload) => {
        if (waiting && payload.i === waiting.i) waiting.resolve(process.hrtime.bigint());
      },
    },
  });
  await drained;
  seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`graphile_backlog_drain_jobs_per_s ${(N / seconds).toFixed(0)} (${N} queued jobs done in ${seconds.toFixed(2)} s)`);

  for (let i = 0; i < 300; i++) {
    const seen = new Promise((resolve) => (waiting = { i, resolve }));
    const before = process.hrtime.bigint();
    await utils.addJob("probe", { i });
    samples.push(Number((await seen) - before) / 1e6);
  }
  samples.sort((a, b) => a - b);
  const pct = (p) => samples[Math.min(samples.length - 1, Math.floor(samples.length * p))].toFixed(2);
  console.log(`graphile_add_to_start_ms p50 ${pct(0.5)} p99 ${pct(0.99)} (300 sequential add_job)`);
  await runner.stop();
  await utils.release();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
