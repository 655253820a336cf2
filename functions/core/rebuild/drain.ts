import type { Db, Tx } from '../../db/types.ts';
import { eventColumns, toStoredEvent, type StoredEventRow } from '../event-store/read.ts';
import type { ProjectionDefinition } from '../projections/definition.ts';
import { applyBatch } from './apply-batch.ts';
import { catchUpAsync } from './async-catch-up.ts';
import { beginStep } from './lease.ts';
import type { BudgetOptions } from './replay.ts';
import type { RebuildHooks, RebuildLease, RebuildRow } from './types.ts';

export interface DrainResult {
  phase: RebuildRow['phase'];
  skipsDrained: number;
  /** Skip rows committed and still pending after the last batch. */
  skipsPending: number;
}

/**
 * Drain (many short transactions): apply the events that appends recorded as skipped, in position
 * order, deleting exactly their skip rows in the same transaction. It returns once a batch comes
 * back short (the backlog is down to what arrives while we work) or the budget is spent; Flip
 * applies the rest under the lock.
 */
export async function drain(db: Db, definition: ProjectionDefinition, lease: RebuildLease, options: BudgetOptions = {}): Promise<DrainResult> {
  const batchSize = options.batchSize ?? 5_000;
  const deadline = Date.now() + (options.maxMs ?? 60_000);
  const maxBatches = options.maxBatches ?? Number.POSITIVE_INFINITY;
  if (definition.kind === 'async') {
    const { rebuild } = await catchUpAsync(db, definition, lease, 'drain', { batchSize, deadline });
    return { phase: rebuild.phase, skipsDrained: 0, skipsPending: 0 };
  }
  for (let batches = 0; ; batches++) {
    const { rebuild, drained } = await db.transaction(async (tx) => {
      const row = await beginStep(tx, lease);
      if (row.phase !== 'draining') return { rebuild: row, drained: 0 };
      const n = await drainBatch(tx, definition, row, batchSize, options.hooks, 'drain');
      await tx.query('update rebuilds set skips_drained = skips_drained + $2, updated_at = now() where rebuild_id = $1::uuid', [
        lease.rebuildId,
        n,
      ]);
      return { rebuild: { ...row, skips_drained: row.skips_drained + n }, drained: n };
    });
    if (rebuild.phase !== 'draining' || drained < batchSize || Date.now() >= deadline || batches + 1 >= maxBatches) {
      return { phase: rebuild.phase, skipsDrained: rebuild.skips_drained, skipsPending: await countSkips(db, rebuild) };
    }
  }
}

/** One batch of skip rows, oldest position first; returns how many were applied. */
export async function drainBatch(
  tx: Tx,
  definition: ProjectionDefinition,
  rebuild: RebuildRow,
  batchSize: number,
  hooks: RebuildHooks | undefined,
  step: 'drain' | 'flip',
): Promise<number> {
  const rows = await tx.query<StoredEventRow>(
    `select ${eventColumns('e')}
       from projection_skips s
       join events e on e.global_position = s.global_position
      where s.projection = $1 and s.version = $2
      order by s.global_position
      limit $3`,
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
