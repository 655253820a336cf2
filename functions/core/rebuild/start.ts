import type { Db, Tx } from '../../db/types.ts';
import { isSqlState } from '../errors.ts';
import { clearTables, createVersionTables, tableFor, tablesOf, type ProjectionDefinition } from '../projections/definition.ts';
import { ident } from '../sql-ident.ts';
import { beginStep, fencedCall, leaseParam, readRebuild } from './lease.ts';
import type { RebuildLease, RebuildRow } from './types.ts';

export interface LockRetryOptions {
  /** First lock_timeout; doubled after each timeout up to `maxLockTimeoutMs`. */
  lockTimeoutMs?: number;
  maxLockTimeoutMs?: number;
  attempts?: number;
  sleep?: (ms: number) => Promise<void>;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Start: the version's table created (blue-green: in a transaction of its own, before the locked
 * one, and emptied there if it holds rows; in-place: after the lock), then in one transaction the
 * exclusive advisory lock, the version marked `rebuilding`, its table truncated (in-place only: the
 * live table), and the replay target recorded.
 *
 * Why it is safe: appends hold the shared lock of the same key from before they read the states
 * until they commit. Once Start holds the exclusive lock, every append that decided without seeing
 * `rebuilding` has committed, so its events are visible to the target read below (position <=
 * target, covered by replay); every append that decides after Start commits sees `rebuilding` and
 * writes skip rows, and its positions are drawn after the target, so replay never reaches them.
 *
 * Why the lock_timeout: while the exclusive request waits, new shared requests queue behind it, so
 * waiting on one slow append would stall every writer of the projection. A short timeout gives way
 * and retries, backing off and lengthening the timeout (up to the appends' own statement timeout).
 * Idempotent: a rebuild already past `starting` is returned as is.
 */
export async function startRebuild(
  db: Db,
  definition: ProjectionDefinition,
  lease: RebuildLease,
  options: LockRetryOptions = {},
): Promise<RebuildRow> {
  // Blue-green: the new version's table (and a sqlApply projection's function) before the lock, so
  // that writers do not wait for DDL; no append writes to it until the state says `rebuilding`, and
  // that is written under the lock. In a transaction of its own, so that the locked one below does
  // not commit catalog changes while every writer queues for it. Fenced like every step: once a
  // Cancel (which drops the version's tables) or a takeover has moved the token, this creates
  // nothing; a crash after it leaves a table that the next Start reuses and a Cancel drops.
  // Emptied here too, not under the lock (migration 016): a TRUNCATE makes new files and, on
  // PostgreSQL 16, fsyncs each rebuilt index, which held every writer for 3 to 10 ms when the locked
  // call did it. Safe because nothing can write the version's tables between this commit and the
  // lock: appends write a version's table only when it is `live` (skip rows when `rebuilding`), and
  // replay and drain only once the locked call has set phase `replaying` (migration 016 says it in
  // full). Only a table that holds rows is truncated: a new one has none, and its truncate would
  // still make files and fsync them, on the disk that the writers' commits flush to.
  // In-place the table is the live one, which appends write: DDL on it (a `create index if not
  // exists` locks the table before it checks) could wait for an append that holds the shared lock
  // while that append waits for our table lock, a deadlock. So there it stays after the lock, where
  // no append holds the shared lock.
  const prepared = await db.transaction(async (tx) => {
    const rebuild = await beginStep(tx, lease);
    if (rebuild.phase === 'starting' && rebuild.mode === 'blue-green') {
      await createVersionTables(tx, definition, [tableFor(definition.name, rebuild.version)]);
      const tables = tablesOf(definition, rebuild.version);
      const [held] = await tx.query<{ rows: boolean }>(`select ${tables.map((t) => `exists (select from ${ident(t)})`).join(' or ')} as rows`);
      if (held?.rows) await clearTables(tx, definition, rebuild.version, 'truncate');
    }
    return rebuild;
  });
  if (prepared.phase !== 'starting') return prepared;
  const table = tableFor(definition.name, prepared.version);
  const tables = JSON.stringify(prepared.mode === 'blue-green' ? [] : tablesOf(definition, prepared.version));
  // The locked part is one call of `ledgerline_rebuild_start` (migrations 007, 016): the fencing
  // check, then, in phase `starting` only, the lock and, each with a snapshot taken after the lock
  // was granted (so they see every append that held the shared lock), the version marked
  // `rebuilding`, the tables it is given truncated (in-place: the live ones; blue-green: none, they
  // were emptied above), its skip rows deleted and the replay target recorded. Blue-green: the
  // call is its own transaction, so the lock is held for the server's work alone, the commit
  // included, with no client round trip while writers queue behind it. In-place: inside a
  // transaction that then runs the DDL on the live table, still under the lock (see above).
  await withLockRetries(options, (lockTimeoutMs) =>
    fencedCall(lease, async () => {
      const call = (q: Db | Tx) =>
        q.query<{ phase: RebuildRow['phase'] }>(
          'select ledgerline_rebuild_start($1::jsonb, $2::text, array(select jsonb_array_elements_text($3::jsonb))) as phase',
          [leaseParam(lease, lockTimeoutMs), definition.kind, tables],
        );
      if (prepared.mode === 'blue-green') {
        await call(db);
        return;
      }
      await db.transaction(async (tx) => {
        const [row] = await call(tx);
        if (row?.phase === 'replaying') await createVersionTables(tx, definition, [table]);
      });
    }),
  );
  return readRebuild(db, lease.rebuildId);
}

/** Runs `attempt` with a growing lock_timeout until it does not time out on a lock. */
export async function withLockRetries<T>(options: LockRetryOptions, attempt: (lockTimeoutMs: number) => Promise<T>): Promise<T> {
  const maxAttempts = options.attempts ?? 20;
  const maxTimeout = options.maxLockTimeoutMs ?? 5_000;
  const pause = options.sleep ?? sleep;
  let timeout = options.lockTimeoutMs ?? 100;
  for (let i = 1; ; i++) {
    try {
      return await attempt(timeout);
    } catch (error) {
      if (!isSqlState(error, '55P03') || i >= maxAttempts) throw error;
      // Back off with jitter, so repeated attempts do not line up with the same slow appends.
      await pause(Math.round(timeout * (0.5 + Math.random())));
      timeout = Math.min(timeout * 2, maxTimeout);
    }
  }
}
