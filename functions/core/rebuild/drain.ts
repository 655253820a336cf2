import type { Db, Tx } from '../../db/types.ts';
import { eventColumns, toStoredEvent, type StoredEventRow } from '../event-store/read.ts';
import { breakages } from '../breakages.ts';
import type { ProjectionDefinition } from '../projections/definition.ts';
import { applyBatch } from './apply-batch.ts';
import { catchUpAsync } from './async-catch-up.ts';
import { beginStep, leaseParam, stepCall } from './lease.ts';
import type { BudgetOptions } from './replay.ts';
import type { RebuildHooks, RebuildLease, RebuildRow } from './types.ts';

export interface DrainResult {
  phase: RebuildRow['phase'];
  skipsDrained: number;
  /** Skip rows committed and still pending after the last batch. */
  skipsPending: number;
}

/**
 * Below this many skip rows in a batch, drain stops and leaves the rest to Flip (DrainOptions).
 */
export const FLIP_BACKLOG = 50;

export interface DrainOptions extends BudgetOptions {
  /**
   * Drain stops once a batch applies at most this many skip rows (default FLIP_BACKLOG), or once
   * three short batches in a row are none smaller than the smallest before them (the backlog has
   * stopped shrinking: appends arrive as fast as a batch drains them), or when the budget is spent. Flip applies what is left
   * while every writer of the projection waits on its lock, so this is what bounds the flip stall:
   * stopping at the first short batch, as drain did, left the skip rows of one whole batch's
   * duration (300–600 rows under the bench's 32 writers, about 40 ms of the lock, in throwaway
   * timings of the flip-stall scenario).
   */
  flipBacklog?: number;
}

/**
 * Drain (many short transactions): apply the events that appends recorded as skipped, in position
 * order, deleting exactly their skip rows in the same transaction. It returns once the backlog is
 * down to what arrives while a small batch runs (`flipBacklog`) or the budget is spent; Flip
 * applies the rest under the lock.
 */
export async function drain(db: Db, definition: ProjectionDefinition, lease: RebuildLease, options: DrainOptions = {}): Promise<DrainResult> {
  const batchSize = options.batchSize ?? 5_000;
  const flipBacklog = options.flipBacklog ?? FLIP_BACKLOG;
  const deadline = Date.now() + (options.maxMs ?? 60_000);
  const maxBatches = options.maxBatches ?? Number.POSITIVE_INFINITY;
  if (definition.kind === 'async') {
    const { rebuild } = await catchUpAsync(db, definition, lease, 'drain', { batchSize, deadline });
    return { phase: rebuild.phase, skipsDrained: 0, skipsPending: 0 };
  }
  let best = Number.POSITIVE_INFINITY;
  let stalled = 0;
  for (let batches = 0; ; batches++) {
    const { phase, drained, skipsDrained, version } =
      definition.sqlApply && !breakages.skipDeleteByRange
        ? await drainBatchCall(db, lease, batchSize, options.hooks)
        : await db.transaction(async (tx) => {
            const row = await beginStep(tx, lease);
            if (row.phase !== 'draining') return { phase: row.phase, drained: 0, skipsDrained: row.skips_drained, version: row.version };
            const n = await drainBatch(tx, definition, row, batchSize, options.hooks, 'drain');
            await tx.query('update rebuilds set skips_drained = skips_drained + $2, updated_at = now() where rebuild_id = $1::uuid', [
              lease.rebuildId,
              n,
            ]);
            return { phase: row.phase, drained: n, skipsDrained: row.skips_drained + n, version: row.version };
          });
    // Three short batches in a row none smaller than the smallest yet: appends arrive as fast as a
    // batch drains them, so going on would not leave Flip less. (One batch was too few: batch times
    // vary on a busy machine, and a single larger batch after a smaller one ended the drain with
    // hundreds of skip rows left: a 70 ms flip in a throwaway timing of the flip-stall scenario.)
    stalled = drained < batchSize && drained >= best ? stalled + 1 : 0;
    best = Math.min(best, drained);
    const settled = drained <= flipBacklog || stalled >= 3;
    if (phase !== 'draining' || settled || Date.now() >= deadline || batches + 1 >= maxBatches) {
      return { phase, skipsDrained, skipsPending: await countSkips(db, { projection: definition.name, version }) };
    }
  }
}

/**
 * A drain batch of a projection that applies in SQL: one call of `ledgerline_rebuild_drain_batch`
 * (migration 007), its own transaction: the fencing check, then `ledgerline_drain_batch`, which
 * reads the oldest `batchSize` skip rows' events into one array, gives it to the version's
 * `<table>_apply` and deletes the skip rows of exactly those positions, and the rebuild's count.
 * One round trip per batch instead of four: the sooner a batch is done, the fewer skip rows
 * arrive during it, and the fewer drain leaves for Flip to apply under its lock (stepCall: with
 * test hooks, inside a transaction).
 *
 * Why the deletion is safe: the array is read once and both the apply and the deletion take it,
 * so a skip row that commits while the statement runs is neither applied nor deleted (it is not in
 * the statement's snapshot) and the next batch takes it. `breakages.skipDeleteByRange` runs the
 * two-statement batch below instead, whose range delete races a late-committing append (in one
 * statement the range would see the same snapshot as the read, so there would be no race to show).
 */
async function drainBatchCall(
  db: Db,
  lease: RebuildLease,
  batchSize: number,
  hooks: RebuildHooks | undefined,
): Promise<{ phase: RebuildRow['phase']; drained: number; skipsDrained: number; version: number }> {
  type Result = { phase: RebuildRow['phase']; drained: number; skipsDrained: number; version: number };
  const call = async (q: Db | Tx) => {
    const [row] = await q.query<{ r: Result }>('select ledgerline_rebuild_drain_batch($1::jsonb, $2::integer) as r', [
      leaseParam(lease, 0),
      batchSize,
    ]);
    return row!.r;
  };
  return stepCall(db, lease, 'drain', hooks, call, (r) => r.drained);
}

/**
 * One batch of skip rows, oldest position first, read into the worker and applied there; returns
 * how many were applied. A JS projection's drain and flip; a `sqlApply` projection's only under the
 * range-delete breakage (drainBatchCall says why).
 */
export async function drainBatch(
  tx: Tx,
  definition: ProjectionDefinition,
  rebuild: RebuildRow,
  batchSize: number,
  hooks: RebuildHooks | undefined,
  step: 'drain' | 'flip',
): Promise<number> {
  // Read by position, as ledgerline_drain_batch reads it (migration 009 says why never by a join).
  const rows = await tx.query<StoredEventRow>(
    `select ${eventColumns('e')} from ledgerline_skipped_events($1, $2, $3) as e order by e.global_position`,
    [definition.name, rebuild.version, batchSize],
  );
  const events = rows.map(toStoredEvent);
  await hooks?.insideBatch?.(step, tx, events.length);
  await applyBatch(tx, definition, rebuild, events);
  return events.length;
}

export async function countSkips(db: Db | Tx, rebuild: Pick<RebuildRow, 'projection' | 'version'>): Promise<number> {
  const [row] = await db.query<{ n: number }>(
    'select count(*)::bigint as n from projection_skips where projection = $1 and version = $2',
    [rebuild.projection, rebuild.version],
  );
  return row?.n ?? 0;
}
