import type { Db, Tx } from '../../db/types.ts';
import { breakages } from '../breakages.ts';
import { ident } from '../sql-ident.ts';
import { EVENT_COLUMNS, toStoredEvent, type StoredEventRow } from '../event-store/read.ts';
import { applyFunctionFor, tableFor, type ProjectionDefinition } from '../projections/definition.ts';
import { applyBatch } from './apply-batch.ts';
import { catchUpAsync } from './async-catch-up.ts';
import { beginStep } from './lease.ts';
import type { RebuildHooks, RebuildLease, RebuildRow } from './types.ts';

/**
 * Events per replay batch (one transaction). A batch is folded per key in memory before one write
 * per key, so larger batches write each row less often: on the bench's log (10,000 orders, their
 * events interleaved) 5,000-event batches replayed about 19,000 events/s and 20,000-event batches
 * about 30,000. The cost is memory: the batch's events are held in the process at once (about
 * 20 MB for 20,000 events of 0.5 KB; the rebuild Lambda has 1 GB); lower `batchSize` for large
 * events. Drain and Flip keep 5,000: their batches are small, and Flip's run under the lock.
 */
export const REPLAY_BATCH_SIZE = 20_000;

/**
 * Events per replay batch of a projection that applies in SQL (`sqlApply`): its events never leave
 * the server, so the batch is not bounded by a Lambda's memory. Each batch writes each key it
 * touches once, so larger batches write less. With `applyStatement` the batch is read straight
 * from the log by the projection's statement (its sort spills to disk past `work_mem`), so what
 * bounds it is the work in one transaction: REPLAY_SQL_BATCH_SIZE events, cut once they reach
 * REPLAY_SQL_BATCH_BYTES, a few seconds per batch on the bench's machine (figures: README,
 * "Benchmarks", and `npm run bench -- --scenarios replay --replay-batch N`). Without it the batch
 * is built as an array in one backend, so its budget is memory, and smaller: REPLAY_ARRAY_BATCH_*.
 * The bytes are counted as stored: a compressed value counts its compressed size, so an array may
 * hold a few times that.
 */
export const REPLAY_SQL_BATCH_SIZE = 250_000;
export const REPLAY_SQL_BATCH_BYTES = 256 * 1024 * 1024;
export const REPLAY_ARRAY_BATCH_SIZE = 100_000;
export const REPLAY_ARRAY_BATCH_BYTES = 64 * 1024 * 1024;

export interface BudgetOptions {
  batchSize?: number;
  /** Replay in SQL only: cut a batch once its events reach this many bytes (REPLAY_SQL_BATCH_BYTES, or REPLAY_ARRAY_BATCH_BYTES). */
  batchBytes?: number;
  /** Stop starting new batches after this long; the caller (a Lambda) calls again. */
  maxMs?: number;
  maxBatches?: number;
  hooks?: RebuildHooks;
}

export interface ReplayResult {
  phase: RebuildRow['phase'];
  checkpoint: number;
  target: number;
  eventsReplayed: number;
  done: boolean;
}

/**
 * Replay (many short transactions): the log from the checkpoint up to the target recorded by Start,
 * in position order, in batches. Each batch, in one transaction: fencing check, read, apply, delete
 * the batch's skip rows, advance the checkpoint. It stops at the target, not at an empty batch:
 * under steady writes a batch is never empty, and everything after the target has a skip row.
 * Returns within the time budget with the checkpoint; calling it again continues from there.
 */
export async function replay(db: Db, definition: ProjectionDefinition, lease: RebuildLease, options: BudgetOptions = {}): Promise<ReplayResult> {
  const setBased = definition.sqlApply === true && definition.applyStatement !== undefined;
  const batchSize = options.batchSize ?? (setBased ? REPLAY_SQL_BATCH_SIZE : definition.sqlApply ? REPLAY_ARRAY_BATCH_SIZE : REPLAY_BATCH_SIZE);
  const batchBytes = options.batchBytes ?? (setBased ? REPLAY_SQL_BATCH_BYTES : REPLAY_ARRAY_BATCH_BYTES);
  const deadline = Date.now() + (options.maxMs ?? 60_000);
  const maxBatches = options.maxBatches ?? Number.POSITIVE_INFINITY;
  const types = JSON.stringify(definition.eventTypes);
  if (definition.kind === 'async') {
    const { rebuild } = await catchUpAsync(db, definition, lease, 'replay', { batchSize, deadline });
    return summary(rebuild, rebuild.phase);
  }
  for (let batches = 0; ; batches++) {
    const result = await db.transaction(async (tx): Promise<ReplayResult> => {
      const rebuild = await beginStep(tx, lease);
      const target = rebuild.target_position ?? 0;
      if (rebuild.phase !== 'replaying') return summary(rebuild, rebuild.phase);
      let size: number;
      let last: number;
      let more: boolean;
      if (definition.sqlApply) {
        ({ size, last, more } = await replayBatchInSql(tx, definition, rebuild, types, batchSize, batchBytes));
        await options.hooks?.insideBatch?.('replay', tx, size);
      } else {
        const rows = await tx.query<StoredEventRow>(
          `select ${EVENT_COLUMNS} from events
            where global_position > $1 and global_position <= $2
              and type in (select jsonb_array_elements_text($3::jsonb))
            order by global_position
            limit $4`,
          [rebuild.checkpoint, target, types, batchSize],
        );
        const events = rows.map(toStoredEvent);
        await options.hooks?.insideBatch?.('replay', tx, events.length);
        await applyBatch(tx, definition, rebuild, events);
        size = events.length;
        last = events[events.length - 1]?.globalPosition ?? target;
        more = size === batchSize;
      }
      // A short batch reached the target: everything up to it is replayed.
      const checkpoint = more ? last : target;
      const phase = checkpoint >= target ? 'draining' : 'replaying';
      await tx.query(
        `update rebuilds set checkpoint = $2, events_replayed = events_replayed + $3, phase = $4, updated_at = now()
          where rebuild_id = $1::uuid`,
        [lease.rebuildId, checkpoint, size, phase],
      );
      return summary({ ...rebuild, checkpoint, events_replayed: rebuild.events_replayed + size }, phase);
    });
    if (result.done || Date.now() >= deadline || batches + 1 >= maxBatches) return result;
  }
}

/**
 * A replay batch of a projection that applies in SQL, as one statement: the batch (up to
 * `batchSize` events, cut at `batchBytes`) is applied and the skip rows of exactly its events are
 * deleted (applyBatch says why never by a range alone); nothing travels to the client but the
 * batch's size, last position and whether events are left before the target.
 *
 * With `applyStatement` (set-based), the projection's own statement reads the batch's range from
 * the log; without it, the batch's events are read into an array of log rows for
 * `<table>_apply(events[])`. Either way the apply and the deletion take the same rows: every part
 * of one statement reads with its one snapshot, so an append that commits meanwhile is in neither
 * (its skip row stays, and a later batch or the drain applies it). The cut's pass and the batch are
 * two reads of one range in that snapshot. One pass cannot do both: the whole rows it would carry
 * past the cut are detoasted for nothing, up to `batchSize`.
 */
async function replayBatchInSql(
  tx: Tx,
  definition: ProjectionDefinition,
  rebuild: RebuildRow,
  types: string,
  batchSize: number,
  batchBytes: number,
): Promise<{ size: number; last: number; more: boolean }> {
  const table = tableFor(definition.name, rebuild.version);
  const ofTypes = 'e.type = any (array(select jsonb_array_elements_text($3::jsonb)))';
  const inBatch = `e.global_position > $1 and e.global_position <= (select upto from cut) and ${ofTypes}`;
  // The skip rows of exactly the batch's events: those in its range whose event this statement's
  // snapshot sees with one of the types, which is the batch's own predicate, so they are the
  // positions the apply reads (one index probe per skip row, and a replay's range has next to
  // none: an array of the batch's positions, built for the deletion alone, was a third pass over
  // the batch, about 6% of a replay; a throwaway EXPLAIN ANALYZE of 250,000-event batches). A skip
  // row whose event commits after the snapshot has no visible event here, so it stays. Only the
  // probe is per skip row: the types' array is an uncorrelated subquery, evaluated once (an array
  // built in the DELETE's own WHERE from a CTE's rows was once re-evaluated for every skip row
  // scanned, and a replay under 32 writers ran one batch into its 120 s timeout; found by the bench).
  const skipped = breakages.skipDeleteByRange
    ? // The breakage's range delete, which in this one statement shares the batch's snapshot and so
      // loses nothing here (as drainBatchCall says of the drain): the suite sees it in the drain.
      's.global_position <= (select upto from cut)'
    : // The range is the index condition; without it every skip row of the version was scanned
      // (appends write skip rows all through a replay).
      `s.global_position > $1 and s.global_position <= (select upto from cut)
        and exists (select from events as e where e.global_position = s.global_position and ${ofTypes})`;
  const apply = definition.applyStatement
    ? // A data-modifying WITH runs to completion whether or not anything reads it.
      `applied as (
         ${definition.applyStatement(table, `(select e.* from events as e where ${inBatch})`)}
       ),`
    : `b as materialized (
         select array(select e from events as e where ${inBatch} order by e.global_position) as events
       ),
       -- Selected below: a CTE that is not data-modifying and whose result nothing uses is not run.
       applied as materialized (select ${ident(applyFunctionFor(table))}(b.events) from b where cardinality(b.events) > 0),`;
  const [row] = await tx.query<{ size: number; last: number | null; more: boolean }>(
    `with src as not materialized (
       -- The batch before the byte cut, narrow: its positions and bytes (data and metadata as
       -- stored, plus the row's other columns), no whole rows. Inlined where it is used (NOT
       -- MATERIALIZED), so the pass in the ELSE below runs only when that branch is taken.
       select e.global_position as gp, pg_column_size(e.data) + pg_column_size(e.metadata) + 200 as bytes
         from events as e
        where e.global_position > $1 and e.global_position <= $2 and ${ofTypes}
        order by e.global_position
        limit $4
     ),
     head as materialized (
       select count(*) as n, max(gp) as last, coalesce(sum(bytes), 0) as bytes from src
     ),
     cut as materialized (
       -- The batch's last position and size. Under the budget (the usual case) the batch is all of
       -- it. Over it, up to the last event that starts under the budget, from a running sum: a
       -- second pass, only then (the subquery in the ELSE is evaluated only when that branch is
       -- taken; the running sum in every batch cost about a tenth of a replay, a throwaway EXPLAIN
       -- ANALYZE of 100,000-event batches). The first event starts at 0, so it is never empty.
       select x.n, x.c[1] as upto, x.c[2] as size
         from (select h.n, case when h.bytes < $7 then array[h.last, h.n] else (
                 select array[max(w.gp) filter (where w.before < $7), count(*) filter (where w.before < $7)]
                   from (select gp, sum(bytes) over (order by gp) - bytes as before from src) as w) end as c
                 from head as h) as x
     ),
     ${apply}
     deleted as (
       delete from projection_skips as s
        where s.projection = $5 and s.version = $6 and ${skipped}
     )
     select c.size, c.upto as last, c.size < c.n or c.n = $4 as more${
       definition.applyStatement ? '' : ', (select count(*) from applied) as applied'
     }
       from cut as c`,
    [rebuild.checkpoint, rebuild.target_position ?? 0, types, batchSize, definition.name, rebuild.version, batchBytes],
  );
  return { size: row?.size ?? 0, last: row?.last ?? rebuild.target_position ?? 0, more: row?.more ?? false };
}

function summary(rebuild: RebuildRow, phase: RebuildRow['phase']): ReplayResult {
  return {
    phase,
    checkpoint: rebuild.checkpoint,
    target: rebuild.target_position ?? 0,
    eventsReplayed: rebuild.events_replayed,
    done: phase !== 'replaying',
  };
}
