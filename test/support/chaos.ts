import { randomUUID } from 'node:crypto';
import { AppError, DatabaseError } from '../../functions/core/errors.ts';
import { appendToStream } from '../../functions/core/event-store/index.ts';
import { ensureProjection, resolveReadTarget } from '../../functions/core/projections/ensure.ts';
import {
  acquireRebuild,
  continueRebuild,
  type RebuildHooks,
  type RebuildLease,
  type RebuildMode,
} from '../../functions/core/rebuild/index.ts';
import type { Db } from '../../functions/db/types.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { diffOrderSummary, prng, randomOrderEvent, type ReadModelDiff } from './orders.ts';
import { createTestDatabase } from './test-db.ts';

export interface ChaosOptions {
  seed: number;
  writers: number;
  streams: number;
  rebuilds: RebuildMode[];
  leaseMs: number;
  batchSize: number;
  /** Probability of a crash after each rebuild step. */
  crashBetweenSteps: number;
  /** Probability, per batch, of a thrown error or of the worker's connection being killed. */
  crashInBatch: number;
  killInBatch: number;
  /** Each batch sleeps up to this long inside its transaction (a slow worker). */
  slowBatchMs: number;
  /** Drain batches additionally sleep up to this long between their read and their delete. */
  slowDrainMs: number;
  /** Once per rebuild, a worker stalls inside a replay batch past its lease while another takes over. */
  zombie: boolean;
  /**
   * Share of appends whose events carry ids of the caller's (as a retried external event does); the
   * others get ids from the server. The two take different bodies of `ledgerline_append` for one
   * event (migration 012), and the suite must break and check both.
   */
  callerIdShare: number;
  /** Share of appends held open after deciding, for holdMs, and share rolled back after writing. */
  holdShare: number;
  holdMs: [number, number];
  rollbackShare: number;
  /** Each writer pauses up to this long between appends (the writers share one Node.js event loop with the rebuild workers). */
  writerPauseMs: number;
  /** Writes continue this long after the last rebuild. */
  tailMs: number;
}

export const DEFAULT_CHAOS: Omit<ChaosOptions, 'seed'> = {
  writers: 8,
  streams: 120,
  rebuilds: ['blue-green', 'in-place', 'blue-green'],
  leaseMs: 300,
  batchSize: 100,
  crashBetweenSteps: 0.2,
  crashInBatch: 0.03,
  killInBatch: 0.02,
  slowBatchMs: 10,
  slowDrainMs: 0,
  zombie: true,
  callerIdShare: 0.5,
  holdShare: 0.08,
  holdMs: [20, 250],
  rollbackShare: 0.08,
  writerPauseMs: 12,
  tailMs: 200,
};

export interface ChaosReport {
  seed: number;
  durationMs: number;
  appends: number;
  appendsPerSecond: number;
  rolledBack: number;
  appendErrors: Record<string, number>;
  crashes: number;
  takeovers: number;
  zombies: number;
  /** Longest time an append waited (its own deliberate hold excluded), and the 99th percentile. */
  maxAppendWaitMs: number;
  p99AppendWaitMs: number;
  liveTable: string;
  skipRowsLeft: number;
  diff: ReadModelDiff;
  timeline: string[];
}

class InjectedCrash extends Error {}
class Rollback extends Error {}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One seeded fault-injection run: writers append to order streams (some held open, some rolled back
 * after writing their skip rows) while rebuild workers run the planned rebuilds and crash between
 * steps, inside batches (a thrown error, a killed connection) and stall as zombies; crashed
 * rebuilds are taken over after their lease expires. Every actor draws from its own PRNG, so the
 * decisions of a seed are reproducible (the interleaving is the database's). Returns what it saw and
 * the difference between the live read model and a from-scratch fold of the committed events.
 */
export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const o = options;
  const t = await createTestDatabase({ max: 4 });
  const writersDb = t.connect(o.writers + 2);
  const rebuildDb = t.connect(6);
  const started = performance.now();
  try {
    await ensureProjection(t.db, orderSummary);
    const projections = [orderSummary];
    const setup = prng(o.seed * 1000);
    const orderIds = Array.from({ length: o.streams }, (_, i) => `${o.seed}-${i}-${randomUUID().slice(0, 4)}`);
    for (const id of orderIds) {
      await writersDb.transaction((tx) =>
        appendToStream(tx, `order-${id}`, [randomOrderEvent(setup, id), randomOrderEvent(setup, id)], { projections }),
      );
    }

    const waits: number[] = [];
    const appendErrors: Record<string, number> = {};
    let appends = 0;
    let rolledBack = 0;
    let stop = false;

    const writer = async (n: number) => {
      const random = prng(o.seed * 1000 + n + 1);
      while (!stop) {
        const id = orderIds[Math.floor(random() * orderIds.length)]!;
        const withIds = random() < o.callerIdShare;
        const events = Array.from({ length: 1 + Math.floor(random() * 3) }, () => randomOrderEvent(random, id)).map((e) =>
          withIds ? e : { type: e.type, data: e.data },
        );
        const roll = random();
        const hold = roll < o.holdShare ? o.holdMs[0] + random() * (o.holdMs[1] - o.holdMs[0]) : 0;
        const rollback = hold === 0 && roll < o.holdShare + o.rollbackShare;
        const t0 = performance.now();
        try {
          await writersDb.transaction(async (tx) => {
            await appendToStream(tx, `order-${id}`, events, { projections });
            if (hold > 0) await sleep(hold);
            if (rollback) throw new Rollback();
          });
          appends += 1;
          waits.push(performance.now() - t0 - hold);
          if (o.writerPauseMs > 0) await sleep(random() * o.writerPauseMs);
        } catch (error) {
          if (error instanceof Rollback) rolledBack += 1;
          else {
            const code =
              error instanceof DatabaseError ? `${error.code}:${error.sqlState ?? 'connection'}` : error instanceof AppError ? error.code : 'UNKNOWN';
            appendErrors[code] = (appendErrors[code] ?? 0) + 1;
          }
        }
      }
    };

    let crashes = 0;
    let takeovers = 0;
    let zombies = 0;
    const random = prng(o.seed * 1000 + 999);
    let workerNo = 0;

    const timeline: string[] = [];
    const mark = (what: string) => timeline.push(`${Math.round(performance.now() - started)}ms ${what}`);
    const rebuildOnce = async (mode: RebuildMode) => {
      let rebuildId: string | undefined;
      let zombieArmed = o.zombie;
      const rescuers: Promise<void>[] = [];

      const work = async (lease: RebuildLease, faults: boolean) => {
        const hooks: RebuildHooks = {
          insideBatch: async (step, tx, size) => {
            if (o.slowBatchMs > 0) await sleep(random() * o.slowBatchMs);
            if (step === 'drain' && o.slowDrainMs > 0) await sleep(random() * o.slowDrainMs);
            if (zombieArmed && step === 'replay' && size > 0) {
              // Stall past the lease while a rescuer takes over; then carry on as if nothing happened.
              zombieArmed = false;
              zombies += 1;
              rescuers.push(rescue());
              await sleep(o.leaseMs * 2.5);
              return;
            }
            if (!faults) return;
            const roll = random();
            if (roll < o.crashInBatch) throw new InjectedCrash(`inside ${step}`);
            if (roll < o.crashInBatch + o.killInBatch) await tx.query('select pg_terminate_backend(pg_backend_pid())');
          },
        };
        await continueRebuild(rebuildDb, orderSummary, lease, {
          batchSize: o.batchSize,
          hooks,
          betweenSteps: async (step) => {
            mark(`${mode} ${step} done`);
            if (faults && random() < o.crashBetweenSteps) throw new InjectedCrash(`after ${step}`);
          },
        });
      };

      const acquire = async (): Promise<RebuildLease | undefined> => {
        for (;;) {
          try {
            // After the first acquire, only ever this rebuild: once it has ended, there is nothing to do.
            const acquired = await acquireRebuild(rebuildDb, orderSummary, {
              owner: `worker-${workerNo++}`,
              mode,
              leaseMs: o.leaseMs,
              ...(rebuildId ? { resume: rebuildId } : {}),
            });
            rebuildId = acquired.lease.rebuildId;
            if (acquired.resumed) takeovers += 1;
            return acquired.lease;
          } catch (error) {
            if (error instanceof AppError && error.code === 'REBUILD_NOT_RESUMABLE') {
              if ((error.details as { phase?: string }).phase !== 'done') throw error;
              return undefined;
            }
            if (error instanceof AppError && error.code === 'REBUILD_IN_PROGRESS') await sleep(25);
            else if (error instanceof AppError && error.category === 'unavailable') await sleep(25);
            else throw error;
          }
        }
      };

      const rescue = async () => {
        await sleep(o.leaseMs * 1.2);
        const lease = await acquire();
        if (!lease) return;
        await work(lease, false).catch(() => undefined);
      };

      for (;;) {
        const lease = await acquire();
        if (!lease) break;
        try {
          await work(lease, true);
        } catch (error) {
          const expected =
            error instanceof InjectedCrash ||
            (error instanceof AppError && (error.category === 'unavailable' || error.code === 'FENCING_TOKEN_LOST'));
          if (!expected) throw error;
          crashes += 1;
          mark(`crash: ${(error as Error).message}`);
        }
      }
      await Promise.all(rescuers);
    };

    const writers = Array.from({ length: o.writers }, (_, n) => writer(n));
    try {
      await sleep(50);
      for (const mode of o.rebuilds) await rebuildOnce(mode);
      await sleep(o.tailMs);
    } finally {
      stop = true;
      await Promise.all(writers);
    }

    const target = await resolveReadTarget(t.db, 'order_summary');
    const diff = await diffOrderSummary(t.db, target!.table);
    const [left] = await t.db.query<{ n: number }>('select count(*)::bigint as n from projection_skips');
    waits.sort((a, b) => a - b);
    const durationMs = performance.now() - started;
    return {
      seed: o.seed,
      durationMs: Math.round(durationMs),
      appends,
      appendsPerSecond: Math.round((appends / durationMs) * 1000),
      rolledBack,
      appendErrors,
      crashes,
      takeovers,
      zombies,
      maxAppendWaitMs: Math.round(waits[waits.length - 1] ?? 0),
      p99AppendWaitMs: Math.round(waits[Math.floor(waits.length * 0.99)] ?? 0),
      liveTable: target!.table,
      skipRowsLeft: left?.n ?? -1,
      diff,
      timeline,
    };
  } finally {
    await t.drop();
  }
}
