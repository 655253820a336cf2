import { randomUUID } from 'node:crypto';
import type { Tx } from '../../db/types.ts';
import { DuplicateEventIdError, isSqlState, WrongExpectedVersionError } from '../errors.ts';
import { jsonEqual } from '../json-equal.ts';
import { breakages } from '../breakages.ts';
import { handles, LOCK_KEY_SQL } from '../projections/definition.ts';
import { applyLive, lockKeysParam, type InlineVersionState } from '../projections/inline.ts';
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
 * The steps, and why (DESIGN.md 3.1), in as few round trips as the protocol allows. No statement
 * below needs another's result in JS before it is sent, so they are sent together: postgres.js
 * pipelines them behind its BEGIN (one round trip for all of them), the Data API driver sends them
 * one after the other. The server runs them in order, each with a snapshot taken when it starts,
 * and whatever one of them waits for, the later ones wait too.
 * 1. Transaction-local timeouts (so no append holds its locks for long) and the shared advisory
 *    locks of the inline projections these events feed (projections/inline.ts). The timeouts bound
 *    every later statement and every idle moment, i.e. everything done while holding the locks; the
 *    wait for the locks themselves holds nothing, and ends when a Start or Flip (short transactions
 *    with their own lock and idle timeouts) does.
 * 2. Lock the stream row, creating it at version 0 when new: an upsert whose update never applies
 *    (`where false`) still locks the conflicting row, after waiting for whoever holds it or is
 *    creating it. This serialises appends to one stream (so the expected version cannot change
 *    before we commit, and a concurrent retry of the same events waits until the original commits),
 *    and gives the transaction its xid before any position is drawn (the `events.global_position`
 *    default enforces that order on its own too).
 * 3. Only when the caller chose event ids: the events already stored with those ids. A statement
 *    after 2, so it sees an original that committed while 2 waited.
 * 4. One statement, with a snapshot taken after the locks of 1 and 2: read the locked version;
 *    check the expected version; unless an id is already stored (3 decides what that means), insert
 *    the events and set the stream's version; read the projection versions' states (after the
 *    advisory locks: projections/inline.ts) and write a skip row per event for every `rebuilding`
 *    version. It returns the version it found, the inserted rows and the states.
 * 5. In JS: a version mismatch is a conflict; stored ids are a duplicate (the original result) or a
 *    conflict; otherwise each `live` inline projection version applies the events.
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
  const idsFromCaller = validated.some((e) => e.idFromCaller);

  const locks = tx.query<{ states: InlineVersionState[] | null }>(
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
  const streamLock = tx.query(
    `insert into streams (stream_id, version) values ($1, 0)
     on conflict (stream_id) do update set version = streams.version where false`,
    [streamId],
  );
  const stored = idsFromCaller ? storedWithIds(tx, validated) : undefined;
  // With the breakage on, the skip decision must come from the stale states of statement 1, so the
  // insert waits for them; otherwise it reads the states itself.
  const staleStates = stateInLock ? ((await locks)[0]?.states ?? []) : null;
  const insert = tx.query<{ current: number; inserted: Array<{ global_position: number; stream_position: number; recorded_at: string }>; states: InlineVersionState[] }>(
    `with cur as (
       select version from streams where stream_id = $1
     ),
     input as (
       select ord, e
         from jsonb_array_elements($2::jsonb) with ordinality as t(e, ord)
        where ($3::bigint is null or $3::bigint = (select version from cur))
          and not ($6::boolean and exists (select 1 from events where event_id = any ((select array_agg((x->>'id')::uuid) from jsonb_array_elements($2::jsonb) as x)::uuid[])))
     ),
     ins as (
       insert into events (stream_id, stream_position, event_id, type, data, metadata)
       select $1, (select version from cur) + ord, (e->>'id')::uuid, e->>'type', e->'data', e->'metadata'
         from input
        order by ord
       returning global_position, stream_position, recorded_at, type
     ),
     upd as (
       update streams set version = version + (select count(*) from ins), updated_at = now()
        where stream_id = $1 and exists (select 1 from ins)
     ),
     states as (
       select name, version, state from jsonb_to_recordset($5::jsonb) as s(name text, version int, state text)
        where $5::jsonb is not null
       union all
       select name, version, state from projections
        where $5::jsonb is null and name in (select jsonb_array_elements_text($4::jsonb)) and kind = 'inline' and state in ('live', 'rebuilding')
     ),
     skips as (
       insert into projection_skips (projection, version, global_position)
       select st.name, st.version, ins.global_position
         from ins
         join states st on st.state = 'rebuilding' and not $7::boolean
         join jsonb_array_elements($8::jsonb) as t(p) on t.p->>'name' = st.name
        where ins.type in (select jsonb_array_elements_text(t.p->'types'))
     )
     select (select version from cur) as current,
            (select coalesce(jsonb_agg(jsonb_build_object(
                       'global_position', global_position, 'stream_position', stream_position,
                       'recorded_at', to_char(recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                     order by stream_position), '[]'::jsonb) from ins) as inserted,
            (select coalesce(jsonb_agg(jsonb_build_object('name', name, 'version', version, 'state', state)), '[]'::jsonb) from states) as states`,
    [
      streamId,
      JSON.stringify(rows),
      expected === 'any' ? null : expected,
      keys,
      staleStates === null ? null : JSON.stringify(staleStates),
      idsFromCaller,
      // The breakage "try-lock, no skip row" is the articles' design: skip without a trace.
      breakages.appendTryLockNoSkipRow,
      JSON.stringify(inline.map((p) => ({ name: p.name, types: p.eventTypes }))),
    ],
  );
  // Every statement is awaited (a rejection of a later one is never left unhandled); the first
  // failure in statement order is the one reported.
  const settled = await Promise.allSettled([locks, streamLock, stored ?? Promise.resolve([]), insert]);
  const failed = settled.find((x) => x.status === 'rejected');
  if (failed) {
    const error: unknown = failed.reason;
    // Another stream holds one of these ids (a retry on the same stream is answered below).
    if (isSqlState(error, '23505') && error.constraint === 'events_event_id_key') throw usedByAnotherStream(validated);
    throw error;
  }
  const [result] = (settled[3] as PromiseFulfilledResult<Awaited<typeof insert>>).value;
  const current = result!.current;

  // A retry of an append that committed is answered with the original result whatever the
  // expected version now says (the original moved the version past it).
  if (stored) {
    const original = originalResult(streamId, validated, (settled[2] as PromiseFulfilledResult<StoredWithId[]>).value);
    if (original) return original;
  }
  if (expected !== 'any' && expected !== current) {
    throw new WrongExpectedVersionError(streamId, expected, current);
  }
  const inserted = result!.inserted;
  if (inserted.length !== rows.length) {
    // The ids were stored by another stream's append that committed after statement 3 ran.
    throw usedByAnotherStream(validated);
  }
  const states = result!.states;

  if (states.some((s) => s.state === 'live')) {
    const storedEvents: StoredEvent[] = rows.map((row, i) => ({
      id: row.id,
      streamId,
      streamPosition: inserted[i]!.stream_position,
      globalPosition: inserted[i]!.global_position,
      type: row.type,
      data: row.data,
      metadata: row.metadata,
      recordedAt: inserted[i]!.recorded_at,
    }));
    await applyLive(tx, inline, states, storedEvents);
  }

  return {
    streamId,
    streamVersion: current + rows.length,
    globalPositions: inserted.map((r) => r.global_position),
    duplicate: false,
  };
}

function usedByAnotherStream(events: readonly ValidatedEvent[]): DuplicateEventIdError {
  return new DuplicateEventIdError(events.map((e) => e.id), 'an event id in this append is already used by another stream');
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
