import { ReceiveMessageCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendToStream } from '../../functions/core/event-store/index.ts';
import { ensureProjection, resolveReadTarget } from '../../functions/core/projections/ensure.ts';
import { acquireRebuild, cancelRebuild } from '../../functions/core/rebuild/index.ts';
import type { Db } from '../../functions/db/types.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { PROJECTIONS } from '../../functions/domain/projections.ts';
import { startLocalSqs, type LocalSqs } from '../../functions/local/local-sqs.ts';
import { localRebuildRunner } from '../../functions/local/rebuild-state-machine.ts';
import { createRebuildStepHandler, TransientError, type Step } from '../../functions/workflow/rebuild-steps.ts';
import { executionName } from '../../functions/workflow/sfn-starter.ts';
import { synthesizedRebuildDefinition, type AslDefinition } from '../../infra/local-definition.ts';
import { diffOrderSummary, expectReadModelMatchesLog, prng, randomOrderEvent } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
let db: Db;
let definition: AslDefinition;
let local: LocalSqs;
let sqs: SQSClient;
let failuresUrl: string;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  t = await createTestDatabase({ max: 12 });
  db = t.db;
  for (const p of PROJECTIONS) await ensureProjection(db, p);
  definition = synthesizedRebuildDefinition();
  local = await startLocalSqs();
  sqs = local.sqs;
  failuresUrl = (await local.queue('failures')).url;
});
afterAll(async () => {
  await local?.stop();
  await t?.drop();
});

/**
 * The local state machine over the real step handler; `fault` may fail a step's n-th call, before
 * it runs, or with `afterCommit` once it has run (its answer lost).
 */
function runner(fault?: (step: Step, call: number) => Error | undefined, options: { afterCommit?: boolean } = {}) {
  const real = createRebuildStepHandler({ db });
  const calls = new Map<Step, number>();
  return localRebuildRunner({
    definition,
    steps: async (event) => {
      const n = (calls.get(event.step) ?? 0) + 1;
      calls.set(event.step, n);
      const error = fault?.(event.step, n);
      if (error && !options.afterCommit) throw error;
      const out = await real(event);
      if (error) throw error;
      return out;
    },
    sendFailure: async (body) => {
      await sqs.send(new SendMessageCommand({ QueueUrl: failuresUrl, MessageBody: JSON.stringify(body) }));
    },
    retryIntervalMs: 10,
    waitMs: 20,
  });
}

/**
 * A blue-green rebuild of order_summary through the state machine, whose `step` task commits its
 * first call and then fails it as if COMMIT's answer (or Lambda's response) was lost, so that Step
 * Functions retries it. The execution must end flipped, with the next version live and matching
 * the log (a failed execution rejects `run`).
 */
async function rebuildLosingFirstAnswer(step: Step) {
  let calls = 0;
  const r = runner(
    (s, n) => {
      if (s !== step) return undefined;
      calls = n;
      return n === 1 ? new TransientError(`injected: the answer to the committed ${step} was lost`) : undefined;
    },
    { afterCommit: true },
  );
  const before = (await resolveReadTarget(db, 'order_summary'))!;
  const out = (await r.run({ projection: 'order_summary', mode: 'blue-green' })) as { lease: { rebuildId: string }; flipped?: boolean };
  expect(calls).toBe(2);
  expect(out.flipped).toBe(true);
  const after = (await resolveReadTarget(db, 'order_summary'))!;
  expect(after.version).toBe(before.version + 1);
  await expectReadModelMatchesLog(db, after.table);
  return { out, before };
}

/** Writers appending order events until stopped. */
function writers(n: number) {
  let on = true;
  const loops = Array.from({ length: n }, async (_, i) => {
    const r = prng(300 + i);
    while (on) {
      const id = `wf-${Math.floor(r() * 40)}`;
      await db.transaction((tx) => appendToStream(tx, `order-${id}`, [randomOrderEvent(r, id)], { projections: PROJECTIONS }));
      await sleep(2);
    }
  });
  return async () => {
    on = false;
    await Promise.all(loops);
  };
}

describe('the rebuild state machine from the synthesized template', () => {
  it('maps every Task state to a local handler, and refuses a definition with an unmapped one', () => {
    expect(runner().taskStates.sort()).toEqual(['Acquire', 'ContinueAsNew', 'Drain', 'Flip', 'RecordFailure', 'Release', 'Replay', 'SendFailure', 'Start']);
    const extra = { ...definition, States: { ...definition.States, Surprise: { Type: 'Task', Resource: 'arn:aws:states:::dynamodb:putItem', End: true } } };
    expect(() => localRebuildRunner({ definition: extra, steps: async (e) => e.state, sendFailure: async () => {} })).toThrow(/Surprise/);
  });

  it('rebuilds while writers append, and the read model equals a fold', async () => {
    const stop = writers(4);
    let output: { lease: { rebuildId: string } };
    const before = (await resolveReadTarget(db, 'order_summary'))!.version;
    try {
      await sleep(300);
      output = (await runner().run({ projection: 'order_summary', mode: 'blue-green' })) as { lease: { rebuildId: string } };
      await sleep(200);
    } finally {
      await stop();
    }
    const after = await resolveReadTarget(db, 'order_summary');
    expect(after!.version).toBe(before + 1);
    const [rebuild] = await db.query<{ phase: string }>('select phase from rebuilds where rebuild_id = $1', [output.lease.rebuildId]);
    expect(rebuild!.phase).toBe('done');
    await expectReadModelMatchesLog(db, after!.table);
  });

  it("drains in the Flip step before its lock: what arrived between the Drain and Flip states is not applied while every writer waits", async () => {
    const step = createRebuildStepHandler({ db });
    let state = await step({ step: 'acquire', state: { projection: 'order_summary', mode: 'blue-green' } });
    state = await step({ step: 'start', state });
    do state = await step({ step: 'replay', state });
    while (!state.done);
    state = await step({ step: 'drain', state });
    // What a state transition and a Lambda invocation let through in AWS: appends that read
    // `rebuilding` and wrote skip rows after the Drain state's last batch.
    const r = prng(77);
    for (let i = 0; i < 120; i++) {
      const id = `gap-${i % 30}`;
      await appendToStream(db, `order-${id}`, [randomOrderEvent(r, id)], { projections: PROJECTIONS });
    }
    state = await step({ step: 'flip', state });
    expect(state.flipped).toBe(true);
    // Nothing appends during the step here, so its drain leaves the lock nothing to apply.
    expect(state.flipSkipsUnderLock).toBe(0);
    state = await step({ step: 'release', state });
    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  });

  it('retries a step that fails transiently, and completes', async () => {
    const stop = writers(2);
    const failed: string[] = [];
    const r = runner((step, call) => {
      if ((step === 'replay' || step === 'flip') && call === 1) {
        failed.push(step);
        return new TransientError(`injected: ${step}`);
      }
      return undefined;
    });
    try {
      await r.run({ projection: 'order_summary', mode: 'in-place' });
    } finally {
      await stop();
    }
    expect(failed).toEqual(['replay', 'flip']);
    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  });

  it('retries an Acquire whose commit succeeded but whose answer was lost, and rebuilds the rebuild it acquired', async () => {
    // The retry comes while the lease the first call took is still held, by the same execution.
    const { out } = await rebuildLosingFirstAnswer('acquire');
    // One rebuild, acquired twice by the execution, and done.
    const rebuilds = await db.query<{ phase: string; attempts: number }>('select phase, attempts from rebuilds where rebuild_id = $1', [out.lease.rebuildId]);
    expect(rebuilds).toEqual([{ phase: 'done', attempts: 2 }]);
    expect(await db.query("select 1 from rebuilds where phase in ('starting', 'replaying', 'draining')")).toEqual([]);
  });

  it('retries a Flip whose commit succeeded but whose answer was lost, and goes on to Release', async () => {
    // The retry comes against a rebuild that is done and whose lease Flip ended.
    const { before } = await rebuildLosingFirstAnswer('flip');
    // Release ran: the retired version's table is gone.
    expect(await db.query('select 1 from pg_class where relname = $1', [before.table])).toEqual([]);
  });

  it('continues as a new execution past the loop bound, and the rebuild completes in the continuation', async () => {
    const bounded = synthesizedRebuildDefinition({ rebuildMaxIterations: 3 });
    // One replay batch of 10 events per call: the first execution runs out of loop turns.
    const steps = createRebuildStepHandler({ db, budgetMs: 0, batchSize: 10 });
    const executions: unknown[] = [];
    const r = localRebuildRunner({
      definition: bounded,
      steps: async (event) => {
        if (event.step === 'acquire' || event.step === 'start') executions.push(event.step);
        return steps(event);
      },
      sendFailure: async (body) => {
        throw new Error(`unexpected failure: ${JSON.stringify(body)}`);
      },
      retryIntervalMs: 10,
      waitMs: 20,
    });
    const first = (await r.run({ projection: 'order_summary', mode: 'blue-green' })) as Record<string, unknown>;
    expect(first.done).not.toBe(true); // the first execution ended by continuing, not by finishing
    await r.idle();
    const [rebuild] = await db.query<{ phase: string; events_replayed: number }>(
      'select phase, events_replayed from rebuilds order by started_at desc limit 1',
    );
    expect(rebuild!.phase).toBe('done');
    expect(rebuild!.events_replayed).toBeGreaterThan(30);
    // One acquire; every continuation entered at Start with the lease it carried over.
    expect(executions[0]).toBe('acquire');
    expect(executions.filter((e) => e === 'acquire')).toHaveLength(1);
    expect(executions.filter((e) => e === 'start').length).toBeGreaterThan(1);
    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  });

  it('on a permanent fault, records it, parks a message in the failures queue and fails, leaving the live read model untouched', async () => {
    const stop = writers(2);
    const live = (await resolveReadTarget(db, 'order_summary'))!;
    const r = runner((step) => (step === 'drain' ? new Error('injected: drain is broken') : undefined));
    try {
      await expect(r.run({ projection: 'order_summary', mode: 'blue-green' })).rejects.toThrow();
      await sleep(100);
    } finally {
      await stop();
    }
    expect(await resolveReadTarget(db, 'order_summary')).toEqual(live);
    expect(await diffOrderSummary(db, live.table)).toEqual({ missing: [], extra: [], wrong: [] });
    const received = await sqs.send(new ReceiveMessageCommand({ QueueUrl: failuresUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
    expect(received.Messages).toHaveLength(1);
    const message = JSON.parse(received.Messages![0]!.Body!) as { execution: string; projection: string; error: { Error: string; Cause: string } };
    expect(message).toMatchObject({ projection: 'order_summary', error: { Error: 'Error' } });
    expect(message.error.Cause).toContain('drain is broken');
    const [rebuild] = await db.query<{ error: string; phase: string; rebuild_id: string }>(
      "select error, phase, rebuild_id::text from rebuilds where phase in ('starting', 'replaying', 'draining')",
    );
    expect(rebuild!.error).toContain('drain is broken');
    // The unfinished rebuild is the operator's to resume or cancel; cancel it so the file ends clean.
    await cancelRebuild(db, orderSummary, rebuild!.rebuild_id);
  });

  it('names each execution after its lease, so resuming a failed rebuild starts an execution under a new name', async () => {
    const first = await acquireRebuild(db, orderSummary, { owner: 'api-1', leaseMs: 100 });
    await sleep(200);
    const resumed = await acquireRebuild(db, orderSummary, { owner: 'api-2', resume: first.lease.rebuildId });
    const names = [executionName(first.lease), executionName(resumed.lease)];
    expect(names[1]).not.toBe(names[0]); // the rebuild id alone repeated, and Step Functions refuses a repeated name
    for (const name of names) expect(name).toMatch(/^[A-Za-z0-9_-]{1,80}$/); // Step Functions' name rules
    await cancelRebuild(db, orderSummary, first.lease.rebuildId);
  });
});
