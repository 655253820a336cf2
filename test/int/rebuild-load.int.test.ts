import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppError, DatabaseError } from '../../functions/core/errors.ts';
import { appendToStream } from '../../functions/core/event-store/index.ts';
import { ensureProjection, resolveReadTarget } from '../../functions/core/projections/ensure.ts';
import { acquireRebuild, drain, flipRebuild, releaseRebuild, replay, startRebuild, type RebuildMode } from '../../functions/core/rebuild/index.ts';
import type { Db } from '../../functions/db/types.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { expectReadModelMatchesLog, prng, randomOrderEvent } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
let db: Db;
const projections = [orderSummary];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  t = await createTestDatabase({ max: 4 });
  db = t.db;
  await ensureProjection(db, orderSummary);
});
afterAll(async () => t?.drop());

interface Load {
  stop(): Promise<{ appends: number; perSecond: number; errors: Record<string, number>; samples: Array<{ start: number; end: number; waitMs: number }> }>;
}

/**
 * Writers appending as fast as they can; a share of appends is held open for holdMs after deciding.
 * Held appends write to streams of their own, so the waits measured on the others are what the
 * rebuild's locks cost them, not queueing on a stream row that a held append has locked.
 */
function startLoad(writers: Db, options: { writers: number; holdShare: number; holdMs: [number, number]; seed: number }): Load {
  let running = true;
  const samples: Array<{ start: number; end: number; waitMs: number }> = [];
  const errors: Record<string, number> = {};
  const orders = Array.from({ length: 200 }, () => randomUUID().slice(0, 8));
  const began = performance.now();
  const loops = Array.from({ length: options.writers }, async (_, n) => {
    const random = prng(options.seed * 100 + n);
    while (running) {
      const hold = random() < options.holdShare ? options.holdMs[0] + random() * (options.holdMs[1] - options.holdMs[0]) : 0;
      const id = hold > 0 ? `held-${randomUUID().slice(0, 8)}` : orders[Math.floor(random() * orders.length)]!;
      const start = performance.now();
      try {
        await writers.transaction(async (tx) => {
          await appendToStream(tx, `order-${id}`, [randomOrderEvent(random, id)], { projections });
          if (hold) await sleep(hold);
        });
        const end = performance.now();
        samples.push({ start, end, waitMs: end - start - hold });
      } catch (error) {
        const code = error instanceof DatabaseError ? `${error.code}:${error.sqlState}` : error instanceof AppError ? error.code : String(error);
        errors[code] = (errors[code] ?? 0) + 1;
      }
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      const seconds = (performance.now() - began) / 1000;
      return { appends: samples.length, perSecond: Math.round(samples.length / seconds), errors, samples };
    },
  };
}

/** Runs one rebuild step by step, recording when Start and each Flip attempt held or waited for the lock. */
async function timedRebuild(mode: RebuildMode) {
  const windows: Array<{ step: string; start: number; end: number }> = [];
  const timed = async <T>(step: string, f: () => Promise<T>) => {
    const start = performance.now();
    try {
      return await f();
    } finally {
      windows.push({ step, start, end: performance.now() });
    }
  };
  const { lease } = await acquireRebuild(db, orderSummary, { owner: 'load', mode });
  await timed('start', () => startRebuild(db, orderSummary, lease));
  while (!(await replay(db, orderSummary, lease, { maxMs: 2_000 })).done);
  let flips = 0;
  for (let lockTimeoutMs = 100; ; lockTimeoutMs = Math.min(lockTimeoutMs * 2, 5_000)) {
    await drain(db, orderSummary, lease, { maxMs: 2_000 });
    flips += 1;
    const flip = await timed('flip', () => flipRebuild(db, orderSummary, lease, { lockTimeoutMs }));
    if (flip.flipped) break;
    await sleep(lockTimeoutMs * Math.random());
  }
  await releaseRebuild(db, orderSummary, lease.rebuildId);
  return { windows, flips };
}

function stallDuring(samples: Array<{ start: number; end: number; waitMs: number }>, windows: Array<{ start: number; end: number }>) {
  const overlapping = samples.filter((s) => windows.some((w) => s.start < w.end && s.end > w.start));
  return Math.round(Math.max(0, ...overlapping.map((s) => s.waitMs)));
}

describe('rebuilds under load', () => {
  it('finishes a rebuild of a growing log while writers append as fast as they can', async () => {
    const seedRandom = prng(7);
    for (let i = 0; i < 300; i++) {
      const id = `seed-${i}`;
      await db.transaction((tx) =>
        appendToStream(tx, `order-${id}`, Array.from({ length: 100 }, () => randomOrderEvent(seedRandom, id)), { projections }),
      );
    }
    const writers = t.connect(10);
    const load = startLoad(writers, { writers: 8, holdShare: 0, holdMs: [0, 0], seed: 1 });
    await sleep(300);
    const blueGreen = await timedRebuild('blue-green');
    const inPlace = await timedRebuild('in-place');
    await sleep(200);
    const result = await load.stop();
    const steady = result.samples.filter((s) => ![...blueGreen.windows, ...inPlace.windows].some((w) => s.start < w.end && s.end > w.start));
    console.log(
      `steady load: ${result.appends} appends at ${result.perSecond}/s during two rebuilds; ` +
        `longest append stall during start/flip ${stallDuring(result.samples, [...blueGreen.windows, ...inPlace.windows])} ms, ` +
        `outside them ${Math.round(Math.max(...steady.map((s) => s.waitMs)))} ms; flip attempts ${blueGreen.flips} + ${inPlace.flips}`,
    );
    expect(result.errors).toEqual({});
    expect(result.appends).toBeGreaterThan(0);
    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  });

  it('starts and flips while a share of appends holds its transaction open for seconds, and no append times out', async () => {
    const writers = t.connect(14);
    const load = startLoad(writers, { writers: 12, holdShare: 0.03, holdMs: [1_000, 2_500], seed: 2 });
    await sleep(1_000);
    const blueGreen = await timedRebuild('blue-green');
    const inPlace = await timedRebuild('in-place');
    const result = await load.stop();
    console.log(
      `held appends: ${result.appends} appends at ${result.perSecond}/s; longest append wait (own hold excluded) ` +
        `during start/flip ${stallDuring(result.samples, [...blueGreen.windows, ...inPlace.windows])} ms, ` +
        `overall ${Math.round(Math.max(...result.samples.map((s) => s.waitMs)))} ms; flip attempts ${blueGreen.flips} + ${inPlace.flips}; ` +
        `${result.samples.filter((s) => s.waitMs > 1_000).length} appends waited over 1 s`,
    );
    // An append that waited longer than its statement_timeout (5 s) would have failed with 57014.
    expect(result.errors).toEqual({});
    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  });
});
