import { inOrder, type Db, type Tx } from '../../db/types.ts';
import { breakages } from '../breakages.ts';
import { isSqlState } from '../errors.ts';
import { lockProjectionExclusive, type ProjectionDefinition } from '../projections/definition.ts';
import { drainBatch } from './drain.ts';
import { FencingTokenLostError } from './errors.ts';
import { beginStep, leaseParam, readRebuild, stepCall } from './lease.ts';
import type { RebuildHooks, RebuildLease, RebuildRow } from './types.ts';

export interface FlipResult {
  flipped: boolean;
  phase: RebuildRow['phase'];
  /** Skip rows applied inside the flip transaction. */
  skipsDrained: number;
}

/**
 * Flip (one transaction): the exclusive lock, the last skip rows, the version marked `live` (blue-
 * green: the old one `retired`), the lease ended.
 *
 * Why it is safe: an append that read `rebuilding` holds the shared lock until it commits, so once
 * the exclusive lock is granted all such appends have committed and their skip rows are visible to
 * the drain statements below, which run after the lock. Appends that take the shared lock after the
 * flip commits read `live` and apply inline. Without the lock (`breakages.flipWithoutLock`) an append
 * can commit its skip row after the last drain: the articles' lost event.
 *
 * Writers wait only for this one short transaction. If the lock is not granted within
 * `lockTimeoutMs`, the flip gives way (`flipped: false`) and the caller drains again and retries
 * with a longer timeout (run.ts), rather than queueing every writer behind one slow append.
 */
export async function flipRebuild(
  db: Db,
  definition: ProjectionDefinition,
  lease: RebuildLease,
  options: { lockTimeoutMs?: number; batchSize?: number; hooks?: RebuildHooks } = {},
): Promise<FlipResult> {
  try {
    return await flipOnce(db, definition, lease, options);
  } catch (error) {
    // Flip is the step that ends the lease, so the same call made again after it committed (its
    // answer lost with the connection, or a Lambda's response lost and the task retried) fails
    // the fencing check. When the rebuild it names is done (flipped by this lease, or by a worker
    // that took it over), `done` is the answer the caller needs: it goes on to Release, which
    // needs no lease and is idempotent, instead of failing with the retired version's table left
    // behind. Any other phase (a Cancel, a takeover still draining) fails as before.
    if (error instanceof FencingTokenLostError && (await readRebuild(db, lease.rebuildId)).phase === 'done') {
      return { flipped: true, phase: 'done', skipsDrained: 0 };
    }
    throw error;
  }
}

async function flipOnce(
  db: Db,
  definition: ProjectionDefinition,
  lease: RebuildLease,
  options: { lockTimeoutMs?: number; batchSize?: number; hooks?: RebuildHooks },
): Promise<FlipResult> {
  const batchSize = options.batchSize ?? 5_000;
  if (definition.sqlApply) return flipInSql(db, lease, batchSize, options);
  try {
    return await db.transaction(async (tx): Promise<FlipResult> => {
      const rebuild = await beginStep(tx, lease, options.lockTimeoutMs ?? 100);
      if (rebuild.phase !== 'draining') return { flipped: rebuild.phase === 'done', phase: rebuild.phase, skipsDrained: 0 };
      // From the lock to commit writers queue behind us, so no client round trip is spent that the
      // protocol does not need: the lock is sent together with the first drain read (which runs
      // after the lock is granted, with a snapshot that sees every append that held the shared
      // lock), and the closing updates in one call.
      const locked = breakages.flipWithoutLock ? Promise.resolve() : lockProjectionExclusive(tx, definition.name);
      let [, n] = await inOrder([locked, drainBatch(tx, definition, rebuild, batchSize, options.hooks, 'flip')]);
      let drained = n;
      while (n === batchSize) {
        n = await drainBatch(tx, definition, rebuild, batchSize, options.hooks, 'flip');
        drained += n;
      }
      // The closing updates: ledgerline_rebuild_close_flip (migration 007), which the flip of a
      // projection applied in SQL runs too. The rebuild row as it stands (fenced and locked above).
      await tx.query('select ledgerline_rebuild_close_flip(r, $2::integer) from rebuilds as r where r.rebuild_id = $1::uuid', [
        lease.rebuildId,
        drained,
      ]);
      return { flipped: true, phase: 'done', skipsDrained: drained };
    });
  } catch (error) {
    if (isSqlState(error, '55P03')) return { flipped: false, phase: 'draining', skipsDrained: 0 };
    throw error;
  }
}

/**
 * Flip of a projection applied in SQL: one call of `ledgerline_rebuild_flip` (migration 007), the
 * same steps as above on the server: the fencing check, then in phase `draining` only the lock, the
 * last skip rows (ledgerline_drain_batch until a batch comes back short), the closing updates. Made
 * on the Db, the call is its own transaction: the lock is held for the server's work alone, the
 * commit included, where the client-driven flip held it across three round trips (the lock with
 * the first drain, the updates, COMMIT); with test hooks, inside a transaction (stepCall).
 * `breakages.flipWithoutLock` is a parameter of the call.
 */
async function flipInSql(
  db: Db,
  lease: RebuildLease,
  batchSize: number,
  options: { lockTimeoutMs?: number; hooks?: RebuildHooks },
): Promise<FlipResult> {
  const call = async (q: Db | Tx) => {
    const [row] = await q.query<{ r: { phase: RebuildRow['phase']; drained: number } }>(
      'select ledgerline_rebuild_flip($1::jsonb, $2::boolean, $3::integer) as r',
      [leaseParam(lease, options.lockTimeoutMs ?? 100), breakages.flipWithoutLock, batchSize],
    );
    return row!.r;
  };
  try {
    const r = await stepCall(db, lease, 'flip', options.hooks, call, (result) => result.drained);
    return { flipped: r.phase === 'done', phase: r.phase, skipsDrained: r.drained };
  } catch (error) {
    if (isSqlState(error, '55P03')) return { flipped: false, phase: 'draining', skipsDrained: 0 };
    throw error;
  }
}
