import { randomUUID } from 'node:crypto';
import type { Tx } from '../../db/types.ts';
import { DuplicateEventIdError, isSqlState, WrongExpectedVersionError } from '../errors.ts';
import { jsonEqual } from '../json-equal.ts';
import { handles } from '../projections/definition.ts';
import { applyOrSkip, lockAndReadStates } from '../projections/inline.ts';
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
 * Order of the steps, and why (DESIGN.md 3.1):
 * 1. Transaction-local timeouts, so no append holds its locks for long.
 * 2. Shared advisory locks of the inline projections these events feed, then their states in a new
 *    statement (projections/inline.ts says why both, and why the locks are held to commit).
 * 3. Lock the stream row (created at version 0 when new). This serialises appends to one stream:
 *    the expected-version check below compares against a version no one else can change before we
 *    commit, and a concurrent retry of the same events waits here until the original commits.
 *    The row lock also assigns the transaction its xid, before any position is drawn (the
 *    `events.global_position` default enforces that order on its own too).
 * 4. Idempotency, in a new statement after the lock (so it sees a committed original): event ids
 *    already stored with the same content return the original result and write nothing.
 * 5. Expected-version check against the locked version.
 * 6. Insert the events and set the stream's version in one statement.
 * 7. Each inline projection version: live -> apply the events; rebuilding -> a skip row per event.
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

  await tx.query(
    `select set_config('statement_timeout', $1, true),
            set_config('idle_in_transaction_session_timeout', $2, true)`,
    [String(APPEND_TIMEOUTS.statementTimeoutMs), String(APPEND_TIMEOUTS.idleInTransactionTimeoutMs)],
  );

  const inline = (options.projections ?? []).filter(
    (p) => p.kind === 'inline' && validated.some((e) => handles(p, e.type)),
  );
  const states = await lockAndReadStates(
    tx,
    inline.map((p) => p.name),
  );

  const current = await lockStream(tx, streamId);

  if (validated.some((e) => e.idFromCaller)) {
    const original = await findOriginal(tx, streamId, validated);
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
         returning global_position, stream_position, recorded_at
       ),
       upd as (
         update streams set version = $3::bigint + $4::bigint, updated_at = now() where stream_id = $1
       )
       select global_position, stream_position,
              to_char(recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as recorded_at
         from ins order by stream_position`,
      [streamId, JSON.stringify(rows), current, rows.length],
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

  if (states.length > 0) {
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
    await applyOrSkip(tx, inline, states, stored);
  }

  return {
    streamId,
    streamVersion: current + rows.length,
    globalPositions: inserted.map((r) => r.global_position),
    duplicate: false,
  };
}

async function lockStream(tx: Tx, streamId: string): Promise<number> {
  // Fast path: lock the existing row, or create it. When another transaction is creating the same
  // stream, the insert waits for it and then does nothing; the second query then locks its row.
  const [row] = await tx.query<{ version: number }>(
    `with locked as (
       select version from streams where stream_id = $1 for update
     ),
     created as (
       insert into streams (stream_id, version)
       select $1, 0 where not exists (select 1 from locked)
       on conflict (stream_id) do nothing
       returning version
     )
     select version from locked union all select version from created`,
    [streamId],
  );
  if (row) return row.version;
  const [again] = await tx.query<{ version: number }>(
    'select version from streams where stream_id = $1 for update',
    [streamId],
  );
  if (!again) throw new Error(`stream ${streamId} vanished while being locked`);
  return again.version;
}

/**
 * The result of the earlier append that stored these ids, when every id is stored with the same
 * stream, type and data (metadata may differ: a retry carries a new request id). Any other overlap
 * is a conflict: the caller reused an id for something else.
 */
async function findOriginal(
  tx: Tx,
  streamId: string,
  events: readonly ValidatedEvent[],
): Promise<AppendResult | undefined> {
  const stored = await tx.query<{
    event_id: string;
    stream_id: string;
    stream_position: number;
    global_position: number;
    type: string;
    data: unknown;
  }>(
    `select event_id::text, stream_id, stream_position, global_position, type, data
       from events
      where event_id in (select jsonb_array_elements_text($1::jsonb)::uuid)
      order by global_position`,
    [JSON.stringify(events.map((e) => e.id))],
  );
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
