import type { Db } from '../../db/types.ts';
import { breakages } from '../breakages.ts';
import { AppError } from '../errors.ts';
import { eventColumns, toStoredEvent, type StoredEventRow } from '../event-store/read.ts';
import { handles, tableFor, type ProjectionDefinition } from '../projections/definition.ts';

/** An open gap: a position below the checkpoint not seen yet, and the xid bound that can close it. */
export interface Gap {
  position: number;
  /** An xid (xid8, as text) taken after the read that found the gap. */
  bound: string;
  /** When the gap was found (ISO-8601), for its age. */
  since: string;
}

export interface ProjectorLease {
  name: string;
  version: number;
  owner: string;
  fencingToken: number;
  leaseMs: number;
}

export class ProjectorLeaseLostError extends AppError {
  constructor(name: string, version: number) {
    super('FENCING_TOKEN_LOST', 'conflict', `projector of ${name} v${version} lost its lease or raced another worker`);
  }
}

/**
 * Takes (or renews) the lease of an async projection version: one projector per version at a time.
 * Returns undefined while another owner holds an unexpired lease. A new owner bumps the fencing token.
 */
export async function acquireProjectorLease(
  db: Db,
  definition: ProjectionDefinition,
  options: { owner: string; leaseMs?: number; version?: number },
): Promise<ProjectorLease | undefined> {
  const leaseMs = options.leaseMs ?? 30_000;
  const [row] = await db.query<{ version: number; fencing_token: number }>(
    `update projections
        set fencing_token = case when lease_owner = $2 then fencing_token else fencing_token + 1 end,
            lease_owner = $2,
            lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
            updated_at = now()
      where name = $1 and kind = 'async'
        and version = coalesce($4::int, (select version from projections where name = $1 and state = 'live'))
        and (lease_owner is null or lease_owner = $2 or lease_expires_at < now())
      returning version, fencing_token`,
    [definition.name, options.owner, leaseMs, options.version ?? null],
  );
  if (!row) return undefined;
  return { name: definition.name, version: row.version, owner: options.owner, fencingToken: row.fencing_token, leaseMs };
}

export interface BatchResult {
  /** Events of the projection's types applied in this batch. */
  applied: number;
  /** Positions read (of any type): 0 means there was nothing new. */
  read: number;
  checkpoint: number;
  gaps: Gap[];
  /** Gaps closed this batch without an event: their transactions ended without writing one. */
  closedEmpty: number[];
}

/**
 * One projector batch, in one READ COMMITTED transaction (DESIGN.md 3.3). The order of its statements
 * is the protocol:
 *
 * 1. Read the checkpoint and gaps, and then the events `position > checkpoint OR position IN gaps`
 *    (plain SELECTs: the transaction holds no xid yet, and must not write before step 2).
 * 2. `pg_current_xact_id()`: the bound of every gap found in step 1. Appends take their xid before
 *    drawing a position (the events.global_position default), so a writer of a position missing
 *    from step 1's read holds an xid smaller than this one, which is assigned after that read. A
 *    transaction that wrote first would own an older xid, possibly below such a writer's: too low.
 * 3. Close the gaps that are provably empty, in ONE statement: `pg_snapshot_xmin(current snapshot) >=
 *    bound` means every transaction that could have written the position has ended, and the same
 *    snapshot sees the position still empty, so nobody ever will. (Never the reading snapshot's
 *    xmax as a bound: it is the latest completed xid + 1, and a writer still running can hold an
 *    xid at or above it: `breakages.asyncSnapshotXmaxBound` restores that bug.) No time-outs: a
 *    slow transaction's gap stays open, and the events after it flow meanwhile.
 * 4. Apply the events in position order (gap fillers included).
 * 5. Compare-and-set the checkpoint and gaps, checking owner and fencing token, and that nobody
 *    changed them since step 1. The row lock is held to commit, so a concurrent or zombie worker
 *    either waits and then fails its own compare-and-set, or already failed: exactly once.
 */
export async function projectBatch(
  db: Db,
  definition: ProjectionDefinition,
  lease: ProjectorLease,
  options: { batchSize?: number } = {},
): Promise<BatchResult> {
  const batchSize = options.batchSize ?? 1_000;
  return db.transaction(async (tx) => {
    const [state] = await tx.query<{ checkpoint: number; gaps: Gap[]; lease_owner: string | null; fencing_token: number }>(
      // force_custom_plan: the batch read below must see its real checkpoint to use the position
      // index (lease.ts, setRebuildTimeouts, says what a generic plan did to the rebuild's read).
      `select checkpoint, gaps, lease_owner, fencing_token, set_config('plan_cache_mode', 'force_custom_plan', true) as plan
         from projections where name = $1 and version = $2`,
      [lease.name, lease.version],
    );
    if (!state || state.lease_owner !== lease.owner || state.fencing_token !== lease.fencingToken) {
      throw new ProjectorLeaseLostError(lease.name, lease.version);
    }
    const gapPositions = JSON.stringify(state.gaps.map((g) => g.position));
    const horizon = breakages.asyncXminHorizon
      ? 'and transaction_id < pg_snapshot_xmin(pg_current_snapshot())'
      : '';
    const rows = await tx.query<StoredEventRow & { read_xmax: string }>(
      `select ${eventColumns()}, pg_snapshot_xmax(pg_current_snapshot())::text as read_xmax
         from events
        where (global_position > $1 ${horizon})
           or global_position = any ((select array_agg(p::bigint) from jsonb_array_elements_text($2::jsonb) as p)::bigint[])
        order by global_position
        limit $3`,
      [state.checkpoint, gapPositions, batchSize],
    );
    const [{ xid } = { xid: '' }] = await tx.query<{ xid: string }>('select pg_current_xact_id()::text as xid');
    const bound = breakages.asyncSnapshotXmaxBound && rows[0] ? rows[0].read_xmax : xid;

    const seen = new Set(rows.map((r) => r.global_position));
    let checkpoint = state.checkpoint;
    for (const r of rows) if (r.global_position > checkpoint) checkpoint = r.global_position;
    const now = new Date().toISOString();
    const gaps: Gap[] = state.gaps.filter((g) => !seen.has(g.position));
    if (!breakages.asyncHighestSeen) {
      for (let p = state.checkpoint + 1; p < checkpoint; p++) {
        if (!seen.has(p)) gaps.push({ position: p, bound, since: now });
      }
    }

    let closedEmpty: number[] = [];
    if (gaps.length > 0) {
      const closable = await tx.query<{ position: number }>(
        `select g.position
           from jsonb_to_recordset($1::jsonb) as g(position bigint, bound text)
          where pg_snapshot_xmin(pg_current_snapshot()) >= g.bound::xid8
            and not exists (select 1 from events e where e.global_position = g.position)`,
        [JSON.stringify(gaps)],
      );
      closedEmpty = closable.map((c) => c.position);
    }
    const closed = new Set(closedEmpty);
    const openGaps = gaps.filter((g) => !closed.has(g.position));

    const events = rows.map(toStoredEvent).filter((e) => handles(definition, e.type));
    if (events.length > 0) await definition.apply(tx, tableFor(lease.name, lease.version), events);

    const [updated] = await tx.query(
      `update projections
          set checkpoint = $5, gaps = $6::jsonb, events_applied = events_applied + $7,
              lease_expires_at = now() + make_interval(secs => $8::double precision / 1000), updated_at = now()
        where name = $1 and version = $2 and lease_owner = $3 and fencing_token = $4
          and checkpoint = $9 and gaps = $10::jsonb
        returning 1 as ok`,
      [
        lease.name,
        lease.version,
        lease.owner,
        lease.fencingToken,
        checkpoint,
        JSON.stringify(openGaps),
        events.length,
        lease.leaseMs,
        state.checkpoint,
        JSON.stringify(state.gaps),
      ],
    );
    if (!updated) throw new ProjectorLeaseLostError(lease.name, lease.version);
    return { applied: events.length, read: rows.length, checkpoint, gaps: openGaps, closedEmpty };
  });
}

/**
 * The projector step a scheduler (or a nudge after an append) calls: takes the lease, runs batches
 * until nothing new is read or the budget is spent, and returns the checkpoint. Returns undefined
 * when another worker holds the lease (at most one projector per projection).
 */
export async function runProjector(
  db: Db,
  definition: ProjectionDefinition,
  options: { owner: string; maxMs?: number; batchSize?: number; leaseMs?: number; version?: number },
): Promise<{ checkpoint: number; gaps: Gap[]; applied: number } | undefined> {
  const lease = await acquireProjectorLease(db, definition, options);
  if (!lease) return undefined;
  const deadline = Date.now() + (options.maxMs ?? 10_000);
  let applied = 0;
  for (;;) {
    const batch = await projectBatch(db, definition, lease, options.batchSize ? { batchSize: options.batchSize } : {});
    applied += batch.applied;
    const filledOrFull = batch.read >= (options.batchSize ?? 1_000);
    if (!filledOrFull || Date.now() >= deadline) return { checkpoint: batch.checkpoint, gaps: batch.gaps, applied };
  }
}
