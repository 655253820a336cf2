import { randomUUID } from 'node:crypto';
import type { Tx } from '../../db/types.ts';
import { DuplicateEventIdError, isSqlState, WrongExpectedVersionError } from '../errors.ts';
import { jsonEqual } from '../json-equal.ts';
import { breakages } from '../breakages.ts';
import { handles, LOCK_KEY_SQL } from '../projections/definition.ts';
import { applyLive, lockKeysParam, skipTargets, type InlineVersionState } from '../projections/inline.ts';
import type { AppendOptions, AppendResult, NewEvent, StoredEvent } from './types.ts';
import { assertValidExpectedVersion, assertValidStreamId, validateNewEvents, type ValidatedEvent } from './validate.ts';

/** Bounds on how long an append may hold locks (and so delay a rebuild's start or flip). */
export const APPEND_TIMEOUTS = {
  statementTimeoutMs: 5_000,
  idleInTransactionTimeoutMs: 10_000,
};

/**
 * Appends events to a stream inside the caller's transaction (READ COMMITTED).
 *
 * The steps, and why (DESIGN.md 3.1), in as few round trips as the protocol allows. Statements 1
 * to 3 do not need each other's results, so they are sent together: postgres.js pipelines them on
 * the transaction's connection (one round trip), the Data API driver sends them one after the
 * other. The server runs them in order, each with a snapshot taken when it starts.
 * 1. Transaction-local timeouts (so no append holds its locks for long) and the shared advisory
 *    locks of the inline projections these events feed (projections/inline.ts). The timeouts bound
 *    every later statement and every idle moment, i.e. everything done while holding the locks; the
 *    wait for the locks themselves holds nothing, and ends when a Start or Flip (short transactions
 *    with their own lock and idle timeouts) does.
 * 2. Lock the stream row (created at version 0 when new), and read the projection versions' states.
 *    The row lock serialises appends to one stream: the expected-version check compares against a
 *    version no one else can change before we commit, and a concurrent retry of the same events
 *    waits here until the original commits. It also assigns the transaction its xid before any
 *    position is drawn (the `events.global_position` default enforces that order on its own too).
 *    The states are read after statement 1 acquired the locks, in a new snapshot (inline.ts).
 * 3. Idempotency, only when the caller chose event ids: ids already stored with the same content
 *    return the original result and write nothing. A statement after 2, so it sees an original
 *    that committed while 2 waited for the row lock.
 * 4. Expected-version check against the locked version (in JS, no round trip).
 * 5. Insert the events, set the stream's version and write the skip rows of every `rebuilding`
 *    version, in one statement.
 * 6. Each `live` inline projection version applies the events (one statement per projection).
 */
export async function appendToStream(
  tx: Tx,
  streamId: string,
  events: readonly NewEvent[],
  options: AppendOptions = {},
): Promise<AppendResult> {
  assertValidStreamId(streamId);
  assertValidExpectedVersion(options.expectedVersion);
  const validated = validateNewEvents(events);
  const expected = options.expectedVersion ?? 'any';

  const inline = (options.projections ?? []).filter(
    (p) => p.kind === 'inline' && validated.some((e) => handles(p, e.type)),
  );
  const keys = lockKeysParam(inline.map((p) => p.name));
  const stateInLock = breakages.appendStateInLockStatement;
  const lockFunction = breakages.appendTryLockNoSkipRow ? 'pg_try_advisory_xact_lock_shared' : 'pg_advisory_xact_lock_shared';
  const timeouts = [String(APPEND_TIMEOUTS.statementTimeoutMs), String(APPEND_TIMEOUTS.idleInTransactionTimeoutMs)];

  const first = tx.query<{ states: InlineVersionState[] | null }>(
    stateInLock
      ? // The deliberate breakage: states read in the statement that waits for the locks.
        `with locks as materialized (
           select ${lockFunction}(${LOCK_KEY_SQL('n')}) from jsonb_array_elements_text($3::jsonb) as n
         )
         select set_config('statement_timeout', $1, true), set_config('idle_in_transaction_session_timeout', $2, true),
                (select coalesce(jsonb_agg(jsonb_build_object('name', name, 'version', version, 'state', state)), '[]'::jsonb)
                   from projections
                  where name in (select jsonb_array_elements_text($3::jsonb)) and kind = 'inline' and state in ('live', 'rebuilding')
                    and (select count(*) from locks) >= 0) as states`
      : `select set_config('statement_timeout', $1, true), set_config('idle_in_transaction_session_timeout', $2, true),
                (select count(*) from (select ${lockFunction}(${LOCK_KEY_SQL('n')}) from jsonb_array_elements_text($3::jsonb) as n) as l) as locks,
                null::jsonb as states`,
    [...timeouts, keys],
  );
  const second = tx.query<{ version: number | null; states: InlineVersionState[] }>(
    `with locked as (
       select version from streams where stream_id = $1 for update
     ),
     created as (
       insert into streams (stream_id, version)
       select $1, 0 where not exists (select 1 from locked)
       on conflict (stream_id) do nothing
       returning version
     )
     select (select version from locked union all select version from created limit 1) as version,
            (select coalesce(jsonb_agg(jsonb_build_object('name', name, 'version', version, 'state', state)), '[]'::jsonb)
               from projections
              where name in (select jsonb_array_elements_text($2::jsonb)) and kind = 'inline' and state in ('live', 'rebuilding')) as states`,
    [streamId, keys],
  );
  const third = validated.some((e) => e.idFromCaller) ? storedWithIds(tx, validated) : undefined;
  // Every statement is awaited (a rejection of a later one is never left unhandled); the first
  // failure in statement order is the one reported.
  const settled = await Promise.allSettled([first, second, third]);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  const [lockRow] = (settled[0] as PromiseFulfilledResult<Awaited<typeof first>>).value;
  const [streamRow] = (settled[1] as PromiseFulfilledResult<Awaited<typeof second>>).value;
  const states = (stateInLock ? lockRow?.states : streamRow?.states) ?? [];
  const current = streamRow?.version ?? (await lockCreatedStream(tx, streamId));

  if (third) {
    const original = originalResult(streamId, validated, (settled[2] as PromiseFulfilledResult<StoredWithId[]>).value);
    if (original) return original;
  }

  if (expected !== 'any' && expected !== current) {
    throw new WrongExpectedVersionError(streamId, expected, current);
  }

  const correlationId = options.correlationId ?? randomUUID();
  const rows = validated.map((e) => ({
    id: e.id,
    type: e.type,
    data: e.data,
    metadata: {
      ...e.metadata,
      correlationId: e.metadata.correlationId ?? correlationId,
      ...(options.causationId !== undefined && e.metadata.causationId === undefined
        ? { causationId: options.causationId }
        : {}),
    },
  }));

  let inserted: Array<{ global_position: number; stream_position: number; recorded_at: string }>;
  try {
    inserted = await tx.query(
      `with input as (
         select ord, e
           from jsonb_array_elements($2::jsonb) with ordinality as t(e, ord)
       ),
       ins as (
         insert into events (stream_id, stream_position, event_id, type, data, metadata)
         select $1, $3::bigint + ord, (e->>'id')::uuid, e->>'type', e->'data', e->'metadata'
           from input
          order by ord
         returning global_position, stream_position, recorded_at, type
       ),
       upd as (
         update streams set version = $3::bigint + $4::bigint, updated_at = now() where stream_id = $1
       ),
       skips as (
         insert into projection_skips (projection, version, global_position)
         select s->>'name', (s->>'version')::int, ins.global_position
           from ins cross join jsonb_array_elements($5::jsonb) as s
          where ins.type in (select jsonb_array_elements_text(s->'types'))
       )
       select global_position, stream_position,
              to_char(recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as recorded_at
         from ins order by stream_position`,
      // The breakage "try-lock, no skip row" is the articles' design: skip without a trace.
      [streamId, JSON.stringify(rows), current, rows.length, breakages.appendTryLockNoSkipRow ? '[]' : skipTargets(inline, states)],
    );
  } catch (error) {
    // Another stream holds one of these ids (a retry on the same stream was caught in step 3).
    if (isSqlState(error, '23505') && error.constraint === 'events_event_id_key') {
      throw new DuplicateEventIdError(
        validated.map((e) => e.id),
        'an event id in this append is already used by another stream',
      );
    }
    throw error;
  }

  if (states.some((s) => s.state === 'live')) {
    const stored: StoredEvent[] = rows.map((row, i) => ({
      id: row.id,
      streamId,
      streamPosition: inserted[i]!.stream_position,
      globalPosition: inserted[i]!.global_position,
      type: row.type,
      data: row.data,
      metadata: row.metadata,
      recordedAt: inserted[i]!.recorded_at,
    }));
    await applyLive(tx, inline, states, stored);
  }

  return {
    streamId,
    streamVersion: current + rows.length,
    globalPositions: inserted.map((r) => r.global_position),
    duplicate: false,
  };
}

/**
 * The stream row was being created by another transaction when statement 2 ran: its insert waited
 * for that one and then did nothing. Lock the row it created (rare: two first appends at once).
 */
async function lockCreatedStream(tx: Tx, streamId: string): Promise<number> {
  const [again] = await tx.query<{ version: number }>(
    'select version from streams where stream_id = $1 for update',
    [streamId],
  );
  if (!again) throw new Error(`stream ${streamId} vanished while being locked`);
  return again.version;
}

interface StoredWithId {
  event_id: string;
  stream_id: string;
  stream_position: number;
  global_position: number;
  type: string;
  data: unknown;
}

function storedWithIds(tx: Tx, events: readonly ValidatedEvent[]): Promise<StoredWithId[]> {
  return tx.query<StoredWithId>(
    `select event_id::text, stream_id, stream_position, global_position, type, data
       from events
      where event_id in (select jsonb_array_elements_text($1::jsonb)::uuid)
      order by global_position`,
    [JSON.stringify(events.map((e) => e.id))],
  );
}

/**
 * The result of the earlier append that stored these ids, when every id is stored with the same
 * stream, type and data (metadata may differ: a retry carries a new request id). Any other overlap
 * is a conflict: the caller reused an id for something else.
 */
function originalResult(
  streamId: string,
  events: readonly ValidatedEvent[],
  stored: readonly StoredWithId[],
): AppendResult | undefined {
  if (stored.length === 0) return undefined;
  const byId = new Map(stored.map((s) => [s.event_id, s]));
  const same =
    stored.length === events.length &&
    events.every((e) => {
      const s = byId.get(e.id);
      return s !== undefined && s.stream_id === streamId && s.type === e.type && jsonEqual(s.data, e.data);
    });
  if (!same) {
    throw new DuplicateEventIdError(
      stored.map((s) => s.event_id),
      'an event id in this append was already used for different content',
    );
  }
  const last = stored[stored.length - 1]!;
  return {
    streamId,
    streamVersion: last.stream_position,
    globalPositions: events.map((e) => byId.get(e.id)!.global_position),
    duplicate: true,
  };
}
