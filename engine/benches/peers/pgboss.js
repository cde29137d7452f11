// pg-boss 10.4.2 on the benchmark's PostgreSQL: bulk enqueue of N no-op jobs with insert()
// batches, then the time to drain them with 8 workers fetching batches of 500 (the fastest
// setting measured on this machine; pg-boss polls, so this bounds it).
const PgBoss = require("pg-boss");

const url = process.env.DATABASE_URL;
const N = Number(process.env.BACKLOG || 100000);
const BATCH = 1000;

async function main() {
  const boss = new PgBoss({ connectionString: url, max: 20 });
  boss.on("error", (e) => console.error(e));
  await boss.start();
  await boss.createQueue("noop");
  let started = process.hrtime.bigint();
  for (let left = N; left > 0; left -= BATCH) {
    const n = Math.min(BATCH, left);
    await boss.insert(Array.from({ length: n }, () => ({ name: "noop", data: {} })));
  }
  let seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`pgboss_bulk_enqueue_jobs_per_s ${(N / seconds).toFixed(0)} (${N} jobs in ${seconds.toFixed(2)} s, ${BATCH} per insert)`);

  let done = 0;
  let finish;
  const drained = new Promise((r) => (finish = r));
  started = process.hrtime.bigint();
  for (let w = 0; w < 8; w++) {
    await boss.work("noop", { batchSize: 500, pollingIntervalSeconds: 0.5 }, async (jobs) => {
      done += jobs.length;
      if (done >= N) finish();
    });
  }
  await drained;
  seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`pgboss_backlog_drain_jobs_per_s ${(N / seconds).toFixed(0)} (${N} queued jobs done in ${seconds.toFixed(2)} s, 8 workers x 500)`);
  await boss.stop({ graceful: false, wait: false });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
