import type { Db } from '../../db/types.ts';
import type { ProjectionDefinition } from '../projections/definition.ts';
import { acquireRebuild, type AcquireOptions } from './acquire.ts';
import { drain } from './drain.ts';
import { flipRebuild } from './flip.ts';
import { releaseRebuild } from './release.ts';
import { replay } from './replay.ts';
import { sleep, startRebuild } from './start.ts';
import type { RebuildHooks, RebuildLease } from './types.ts';

export interface RunOptions extends AcquireOptions {
  batchSize?: number;
  hooks?: RebuildHooks;
  /** Called between steps with the step just finished; a test may throw here to simulate a crash. */
  betweenSteps?: (step: string) => Promise<void>;
  flipLockTimeoutMs?: number;
  maxFlipLockTimeoutMs?: number;
}

/**
 * Runs a rebuild to the end in this process, step by step, exactly as the Step Functions workflow
 * does with one task per step: acquire, start, replay until the target, drain, flip (giving way on
 * a lock timeout: drain again, back off, lengthen the timeout), release. Used locally and in tests.
 * A crash anywhere leaves a state another worker resumes after the lease expires.
 */
export async function runRebuild(db: Db, definition: ProjectionDefinition, options: RunOptions): Promise<{ rebuildId: string; lease: RebuildLease }> {
  const { lease } = await acquireRebuild(db, definition, options);
  await options.betweenSteps?.('acquire');
  await continueRebuild(db, definition, lease, options);
  return { rebuildId: lease.rebuildId, lease };
}

/**
 * Takes a rebuild from whatever phase it is in to the end. Every step is a no-op outside its own
 * phase, so a worker that took over a crashed rebuild calls this and continues where it stopped.
 */
export async function continueRebuild(
  db: Db,
  definition: ProjectionDefinition,
  lease: RebuildLease,
  options: Omit<RunOptions, keyof AcquireOptions> = {},
): Promise<void> {
  const between = options.betweenSteps ?? (async () => {});
  // Each step's own batch default (replay's is larger) unless the caller chose one for all.
  const budget = { ...(options.batchSize ? { batchSize: options.batchSize } : {}), maxMs: 10_000, ...(options.hooks ? { hooks: options.hooks } : {}) };
  await startRebuild(db, definition, lease);
  await between('start');
  while (!(await replay(db, definition, lease, budget)).done) await between('replay');
  await between('replay');
  let lockTimeoutMs = options.flipLockTimeoutMs ?? 100;
  const maxLockTimeoutMs = options.maxFlipLockTimeoutMs ?? 5_000;
  for (;;) {
    const drained = await drain(db, definition, lease, budget);
    await between('drain');
    if (drained.phase !== 'draining') break;
    const flip = await flipRebuild(db, definition, lease, { lockTimeoutMs, ...(options.batchSize ? { batchSize: options.batchSize } : {}), ...(options.hooks ? { hooks: options.hooks } : {}) });
    if (flip.flipped || flip.phase !== 'draining') break;
    await sleep(Math.round(lockTimeoutMs * Math.random()));
    lockTimeoutMs = Math.min(lockTimeoutMs * 2, maxLockTimeoutMs);
  }
  await between('flip');
  await releaseRebuild(db, definition, lease.rebuildId);
}
