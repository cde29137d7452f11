// Conformance of the embedded engine with the official Hatchet TypeScript SDK (pinned in
// package.json). The engine is started the way the SDK starts its own embedded engine:
// HatchetEmbeddedClient.init() runs HATCHET_CLIENT_EMBEDDED_BINARY_PATH with -handshake-file.
// Exits non-zero on the first broken expectation.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { HatchetEmbeddedClient } = require('@hatchet-dev/typescript-sdk/v1/embedded');

function check(condition, what) {
  if (!condition) {
    console.log(`FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

async function main() {
  const hatchet = await HatchetEmbeddedClient.init({ databaseUrl: process.env.SFP_TEST_DATABASE_URL });

  const dag = hatchet.workflow({ name: 'ts-dag' });
  const first = dag.task({ name: 'first', fn: (input) => ({ doubled: input.n * 2 }) });
  dag.task({
    name: 'second',
    parents: [first],
    fn: async (input, ctx) => {
      const parent = await ctx.parentOutput(first);
      return { plusOne: parent.doubled + 1 };
    },
  });

  const flaky = hatchet.task({
    name: 'ts-flaky',
    retries: 2,
    fn: (_, ctx) => {
      if (ctx.retryCount() < 2) throw new Error(`flaky attempt ${ctx.retryCount()}`);
      return { attempt: ctx.retryCount() };
    },
  });

  const failing = hatchet.task({
    name: 'ts-fail',
    retries: 0,
    fn: () => {
      throw new Error('this task always fails');
    },
  });

  const onEvent = hatchet.task({
    name: 'ts-event',
    onEvents: ['ts:event'],
    fn: (input) => {
      fs.writeFileSync(input.marker, JSON.stringify({ seen: true }));
      return { ok: true };
    },
  });

  const worker = await hatchet.worker('ts-conformance', { workflows: [dag, flaky, failing, onEvent], slots: 4 });
  void worker.start();
  try {
    const result = await dag.run({ n: 20 });
    check(result.first.doubled === 40, `DAG first task output ${JSON.stringify(result)}`);
    check(result.second.plusOne === 41, 'DAG second task read its parent\'s output');

    const flakyResult = await flaky.run({});
    check(flakyResult.attempt === 2, `a task failing twice succeeds on its third attempt ${JSON.stringify(flakyResult)}`);

    let failure = null;
    try {
      await failing.run({});
    } catch (e) {
      failure = e;
    }
    check(failure !== null, 'a failing task rejects in the caller');
    check(String(failure && (failure.stack || failure.message)).includes('this task always fails') ||
      JSON.stringify(failure).includes('this task always fails'), `the task's error reaches the caller: ${failure}`);

    const marker = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ts-event-')), 'seen.json');
    await hatchet.events.push('ts:event', { marker });
    const deadline = Date.now() + 60000;
    while (!fs.existsSync(marker) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
    }
    check(fs.existsSync(marker), 'an event push started the workflow listening for its key');
  } finally {
    await worker.stop();
    await hatchet.stopEmbedded();
  }
  console.log('typescript conformance: all passed');
  process.exit(0);
}

main().catch((e) => {
  console.log(`FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
