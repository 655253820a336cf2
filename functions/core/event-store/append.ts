import { randomUUID } from 'node:crypto';
import type { Db, Tx } from '../../db/types.ts';
import { DuplicateEventIdError, isSqlState, WrongExpectedVersionError } from '../errors.ts';
import { jsonEqual } from '../json-equal.ts';
import { breakages } from '../breakages.ts';
import { handles } from '../projections/definition.ts';
import { applyLive, type InlineVersionState } from '../projections/inline.ts';
import type { AppendOptions, AppendResult, NewEvent, StoredEvent } from './types.ts';
import { assertValidExpectedVersion, assertValidStreamId, validateNewEvents, type ValidatedEvent } from './validate.ts';

/** Bounds on how long an append may hold locks (and so delay a rebuild's start or flip). */
export const APPEND_TIMEOUTS = {
  statementTimeoutMs: 5_000,
  idleInTransactionTimeoutMs: 10_000,
};

/**
 * Appends events to a stream, inside the caller's transaction (READ COMMITTED) when given a `Tx`.
 *
 * Given the `Db` itself, the append is its own transaction: when every inline projection it feeds
 * applies in SQL (`sqlApply`, as order_summary does), that is ONE autocommit statement, the call of
 * `ledgerline_append`, whose implicit transaction holds the locks to its end exactly as an explicit
 * one would (one round trip; one RDS Data API call instead of four). Otherwise it opens a
 * transaction, because a projection applied from JS must commit with the events.
 *
 * The steps, and why (DESIGN.md 3.1), in as few statements as the protocol allows:
 * 1.-4. One call of `ledgerline_append` (migrations/003_append_function.sql, where each step is
 *    explained; 004_inline_sql_apply.sql adds steps 7 and 8, 005_prepare_before_the_lock.sql
 *    step 9, and 008_append_without_execute.sql does the same with less work per call): the shared
 *    advisory locks of the inline projections these events feed; the transaction-local timeouts;
 *    the stream row lock; the version, and the events already stored with caller-chosen ids, read
 *    after it; the expected-version check; the projection versions' states, read after the
 *    advisory locks (projections/inline.ts); the insert of the events with the stream's new version
 *    and a skip row per event for every `rebuilding` version.
 *    Each read is a statement of its own inside the function, run after the locks are granted, with
 *    its own snapshot: a VOLATILE function takes a fresh one per statement, which is what the order
 *    of locks and reads needs (the locks themselves are plpgsql expressions since migration 008).
 *    One statement on the wire instead of four: one Data API call instead of four (or five).
 *    Then each `live` version of a projection that applies in SQL applies the events, in the same
 *    call (migration 004); for a one-event append it merges instead the document this process
 *    computed (`inlinePartial`), when the version's functions are of the same code (migration 010).
 *    The common shape, one event feeding one inline projection that applies in SQL, with an id
 *    from the server, runs a body of its own with the same steps in fewer plpgsql statements and
 *    expressions (migrations 012 to 014), and answers only the version and the positions, all that
 *    is read here then (013); every other shape, a projection applied in JS included (014), runs
 *    010's, as `ledgerline_append_general`.
 *    test/int/append-bodies.int.test.ts holds the two to the same answers, as far as this function
 *    reads them, and the same rows; the fault-injection suite appends in both shapes.
 * 5. In JS: a version mismatch is a conflict; stored ids are a duplicate (the original result) or a
 *    conflict (in both cases the function inserted nothing); otherwise each `live` version of the
 *    other inline projections applies the events.
 */
export async function appendToStream(
  q: Tx | Db,
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
  const inJs = inline.filter((p) => !p.sqlApply);
  if ('transaction' in q && inJs.length > 0) return q.transaction((tx) => appendToStream(tx, streamId, events, options));
  const tx: Tx = q;
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
  // A one-event append carries the documents its writer can compute (inlinePartial); the function
  // merges each into the live version when that version's functions are of the same code, and
  // applies in SQL otherwise (migration 010).
  const one = rows.length === 1 ? rows[0]! : undefined;
  // A feed's `types` are only ever tested against this append's own events (migrations 003 to 014),
  // so it carries the projection's types that occur here rather than all of them: the same answers,
  // and fewer bytes for the function to parse and copy into its variables (order_summary's eight
  // types were about a sixth of a one-event append's parameters; bench scenario 5 counted 957,622
  // instructions per append before this and 934,772 after: bench/RESULTS.md at db08aef and 8aa57b3).
  const appendedTypes = new Set(validated.map((e) => e.type));
  const feeds = inline.map((p) => {
    const partial =
      one && p.sqlApply && p.inlinePartial
        ? p.inlinePartial({ ...one, streamId, streamPosition: expected === 'any' ? undefined : expected + 1 })
        : undefined;
    const types = p.eventTypes.filter((t) => appendedTypes.has(t));
    return { name: p.name, types, sql: p.sqlApply === true, ...(partial ? { partial } : {}) };
  });

  let result: AppendOutcome;
  try {
    const [row] = await tx.query<{ r: AppendOutcome }>(
      `select ledgerline_append($1::text, $2::jsonb, $3::bigint, $4::jsonb, $5::boolean, $6::text, $7::text, $8::boolean, $9::boolean) as r`,
      [
        streamId,
        JSON.stringify(rows),
        expected === 'any' ? null : expected,
        JSON.stringify(feeds),
        idsFromCaller,
        String(APPEND_TIMEOUTS.statementTimeoutMs),
        // Given the Db, the call is its own transaction: no statement of it follows the call, so
        // the one-event body sets only lock_timeout, for its own waits (migration 017); given a
        // Tx, the rest of the caller's transaction is bounded too.
        'transaction' in q ? null : String(APPEND_TIMEOUTS.idleInTransactionTimeoutMs),
        breakages.appendStateInLockStatement,
        // The breakage "try-lock, no skip row" is the articles' design: skip without a trace.
        breakages.appendTryLockNoSkipRow,
      ],
    );
    result = row!.r;
  } catch (error) {
    // Another stream's append stored one of these ids after the function looked (a retry on the
    // same stream waits for the stream lock and is answered below as a duplicate).
    if (isSqlState(error, '23505') && error.constraint === 'events_event_id_key') throw usedByAnotherStream(validated);
    throw error;
  }
  const current = result.current;

  // A retry of an append that committed is answered with the original result whatever the
  // expected version now says (the original moved the version past it).
  const original = originalResult(streamId, validated, result.stored);
  if (original) return original;
  if (expected !== 'any' && expected !== current) {
    throw new WrongExpectedVersionError(streamId, expected, current);
  }
  const inserted = result.inserted;
  // The states, and each event's stream position and time, are in the answer whenever a projection
  // applies in JS: the one-event body leaves them out only for a projection applied in SQL.
  const states = result.states ?? [];

  if (inJs.length > 0 && states.some((s) => s.state === 'live')) {
    const storedEvents: StoredEvent[] = rows.map((row, i) => ({
      id: row.id,
      streamId,
      streamPosition: inserted[i]!.stream_position!,
      globalPosition: inserted[i]!.global_position,
      type: row.type,
      data: row.data,
      metadata: row.metadata,
      recordedAt: inserted[i]!.recorded_at!,
    }));
    await applyLive(tx, inJs, states, storedEvents);
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

/** What `ledgerline_append` (migrations 003 to 014) returns. */
interface AppendOutcome {
  /** The stream's version when the function read it, under the stream lock. */
  current: number;
  /** Events already stored with the caller's ids (then nothing was inserted). */
  stored: StoredWithId[];
  /** Stream position and time: left out by the one-event body, which serves only a projection applied in SQL (013, 014). */
  inserted: Array<{ global_position: number; stream_position?: number; recorded_at?: string }>;
  /** The inline projection versions' states, read after the shared locks; left out as above. */
  states?: InlineVersionState[];
}

interface StoredWithId {
  event_id: string;
  stream_id: string;
  stream_position: number;
  global_position: number;
  type: string;
  data: unknown;
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
