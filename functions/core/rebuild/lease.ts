import { inOrder, type Db, type Tx } from '../../db/types.ts';
import { breakages } from '../breakages.ts';
import { isSqlState } from '../errors.ts';
import { FencingTokenLostError } from './errors.ts';
import type { RebuildHooks, RebuildLease, RebuildRow } from './types.ts';

export const REBUILD_COLUMNS = `rebuild_id::text, projection, version, previous_version, mode, phase, target_position,
  checkpoint, events_replayed, skips_drained, lease_owner, fencing_token, attempts, error,
  to_char(started_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as started_at,
  to_char(finished_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as finished_at`;

/**
 * The fencing check every writing step runs first, inside the transaction that writes: a
 * conditional UPDATE of the rebuild row on (owner, fencing token) that also extends the lease. Its
 * row lock is held to commit, which is what makes it safe:
 *
 * - A takeover (acquire.ts) updates the same row. If it comes while this batch is running, it waits
 *   for our commit and then reads our checkpoint; if it committed first, this UPDATE matches no row
 *   (the token moved) and the batch throws before writing anything.
 * - With a plain SELECT instead, a zombie could read its still-valid token, the takeover commit and
 *   read the old checkpoint, and then both apply the same events: the prototype applied 500-1,500
 *   events twice. `breakages.fencingPlainSelect` restores that bug for the tests.
 */
export async function fence(tx: Tx, lease: RebuildLease): Promise<RebuildRow> {
  // The check itself is ledgerline_rebuild_fence (migration 007), which the steps made as one
  // server-side call run too; `breakages.fencingPlainSelect` travels in the lease parameter.
  return fencedCall(lease, async () => {
    const [row] = await tx.query<RebuildRow>(`select ${REBUILD_COLUMNS} from ledgerline_rebuild_fence($1::jsonb)`, [leaseParam(lease, 0)]);
    return row!;
  });
}

/**
 * Transaction-local settings for rebuild steps. The limits: a frozen worker releases its locks
 * within these. `plan_cache_mode = force_custom_plan`: the batch reads are prepared statements, and
 * after five executions PostgreSQL may switch to a generic plan that cannot see how wide the
 * position range is; for `position > $1 … order by position limit $n` it chose to read the whole
 * rest of the log and sort it, every batch (found by `npm run bench`: a 1,000,000-event replay fell
 * from 20,000 to 1,500 events/s, 1.35 s per 5,000-event batch). Planning each batch costs about a
 * millisecond. `work_mem` 64 MB: a replay batch of a projection applied in SQL sorts its events in
 * memory (20,000 events of the bench's log took about 7 MB; the default 4 MB spilled to disk).
 * Set for the step's transaction only, rather than on the apply function, which every append
 * calls too.
 */
export async function setRebuildTimeouts(tx: Tx, lockTimeoutMs?: number): Promise<void> {
  // Made by ledgerline_rebuild_limits (migration 007), which the one-call steps run too.
  await tx.query('select ledgerline_rebuild_limits($1::text)', [String(lockTimeoutMs ?? 0)]);
}

/**
 * What every writing step (start, replay, drain, flip) sends first: its timeouts, then the fencing
 * check, together (neither needs the other's result; the server runs them in this order).
 */
export async function beginStep(tx: Tx, lease: RebuildLease, lockTimeoutMs?: number): Promise<RebuildRow> {
  const [, row] = await inOrder([setRebuildTimeouts(tx, lockTimeoutMs), fence(tx, lease)]);
  return row;
}

/**
 * The lease parameter of the fencing check (`ledgerline_rebuild_fence`) and of the steps made as
 * one server-side call (migration 007: `ledgerline_rebuild_start`, `_drain_batch`, `_flip`, which
 * begin with `ledgerline_rebuild_begin`, beginStep's two statements in one): the lease, the
 * lock_timeout and the fencing breakage, as one JSON value (`$1::jsonb`).
 */
export function leaseParam(lease: RebuildLease, lockTimeoutMs: number): string {
  return JSON.stringify({
    rebuildId: lease.rebuildId,
    owner: lease.owner,
    token: lease.fencingToken,
    leaseMs: lease.leaseMs,
    lockTimeout: String(lockTimeoutMs),
    plainSelect: breakages.fencingPlainSelect,
  });
}

/** A lost lease raised by such a call (SQLSTATE LLF01) is FencingTokenLostError. */
export async function fencedCall<T>(lease: RebuildLease, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (isSqlState(error, 'LLF01')) throw new FencingTokenLostError(lease.rebuildId);
    throw error;
  }
}

/**
 * Runs such a call on the Db, as its own transaction, so that a lock it takes is held for the
 * server's work alone, the commit included. With a fault-injection hook (tests) it runs inside a
 * transaction instead, the hook after the call and before the commit, so that a crash there rolls
 * the call back.
 */
export function stepCall<R>(
  db: Db,
  lease: RebuildLease,
  step: 'drain' | 'flip',
  hooks: RebuildHooks | undefined,
  call: (q: Db | Tx) => Promise<R>,
  size: (result: R) => number,
): Promise<R> {
  const hook = hooks?.insideBatch;
  return fencedCall(lease, () =>
    hook
      ? db.transaction(async (tx) => {
          const result = await call(tx);
          await hook(step, tx, size(result));
          return result;
        })
      : call(db),
  );
}

/** The rebuild row as every step reports it. */
export async function readRebuild(q: Db | Tx, rebuildId: string): Promise<RebuildRow> {
  const [row] = await q.query<RebuildRow>(`select ${REBUILD_COLUMNS} from rebuilds where rebuild_id = $1::uuid`, [rebuildId]);
  if (!row) throw new FencingTokenLostError(rebuildId);
  return row;
}
