import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WrongExpectedVersionError } from '../../functions/core/errors.ts';
import { appendToStream, readStream } from '../../functions/core/event-store/index.ts';
import { ensureProjection } from '../../functions/core/projections/ensure.ts';
import { acquireRebuild, startRebuild } from '../../functions/core/rebuild/index.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { expectReadModelMatchesLog, prng, randomOrderEvent } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

/**
 * Migration 012 gave the one-event append (one inline projection, ids from the server) a body of
 * its own and kept 010's as `ledgerline_append_general`, which every other shape calls. Both must
 * give the same answer and leave the same rows for the same append: each case here runs once
 * through each body, on twin streams, while the projection's one version is live and again while a
 * blue-green rebuild of it runs, and the outcomes are compared.
 *
 * "The same answer" is what the client reads (appendToStream): the version, the stored ids and the
 * positions always; the states and each event's stream position and time only for a projection
 * applied in JS. For a projection applied in SQL the one-event body leaves those out (migration
 * 013), and the general body still sends them: the stream positions compared are then the log's.
 * Since migration 014 a projection applied in JS runs the general body from either entry point; its
 * cases hold the one-event body to passing it on (its own answer has no states to apply in JS).
 */
let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase({ max: 24 });
  await ensureProjection(t.db, orderSummary);
});
afterAll(async () => t?.drop());

type Body = 'ledgerline_append' | 'ledgerline_append_general';
interface Case {
  name: string;
  /** Events appended to the stream first (through the same body). */
  before: number;
  expected: number | null;
  type?: string;
  feed?: { name?: string; sql?: boolean; partial?: boolean };
  /** What the outcome must also show (beyond both bodies agreeing), while v1 is live / while v2 rebuilds. */
  live?: Record<string, unknown>;
  rebuilding?: Record<string, unknown>;
}

const CASES: Case[] = [
  {
    name: 'a new stream, any version, the writer’s document',
    before: 0,
    expected: null,
    live: { current: 0, inserted: [1], skips: [], summary: { events_applied: 1 }, stream: 1, events: 1 },
    rebuilding: {
      skips: [{ projection: 'order_summary', version: 2 }],
      summary: { events_applied: 1 },
    },
  },
  { name: 'a stream with events, any version', before: 2, expected: null },
  { name: 'the expected version', before: 1, expected: 1 },
  { name: 'a new stream, expected 0, the document computed in SQL', before: 0, expected: 0, feed: { partial: false } },
  { name: 'a wrong expected version', before: 2, expected: 7 },
  {
    name: 'a new stream expected at version 5',
    before: 0,
    expected: 5,
    live: { current: 0, inserted: [], stream: null, events: 0 },
  },
  {
    name: 'a projection applied in JS (not in SQL)',
    before: 1,
    expected: null,
    feed: { sql: false, partial: false },
    rebuilding: { states: [{ state: 'live' }, { state: 'rebuilding' }], skips: [{ projection: 'order_summary', version: 2 }] },
  },
  { name: 'an event type the projection does not handle', before: 1, expected: null, type: 'OrderNoted' },
  { name: 'a projection with no version', before: 0, expected: null, feed: { name: 'not_ensured', partial: false } },
];

async function call(body: Body, streamId: string, c: Case, expected: number | null, idle: string | null = '10000') {
  const id = randomUUID();
  const orderId = streamId.slice('order-'.length);
  const type = c.type ?? 'PaymentProcessed';
  const data = { orderId, occurredAt: '2026-01-01T00:00:00.000Z', amount: 5, status: 'successful' };
  const partial =
    c.feed?.partial === false
      ? undefined
      : orderSummary.inlinePartial!({ id, streamId, type, data, metadata: {}, streamPosition: expected === null ? undefined : expected + 1 });
  const feed = {
    name: c.feed?.name ?? orderSummary.name,
    types: orderSummary.eventTypes,
    sql: c.feed?.sql ?? true,
    ...(partial ? { partial } : {}),
  };
  const [row] = await t.db.query<{ r: AppendOutcome }>(
    `select ${body}($1::text, $2::jsonb, $3::bigint, $4::jsonb, false, '5000', $5::text, false, false) as r`,
    [streamId, JSON.stringify([{ id, type, data, metadata: {} }]), expected, JSON.stringify([feed]), idle],
  );
  return row!.r;
}

interface AppendOutcome {
  current: number;
  stored: unknown[];
  inserted: Array<{ global_position: number; stream_position?: number; recorded_at?: string }>;
  states?: Array<{ name: string; version: number; state: string }>;
}

/**
 * What one body's append of case `c` answered and left, with what differs between twins taken out.
 * `idle` null: the call as its own transaction, as the client sends it given the Db (migration 017).
 */
async function outcome(body: Body, c: Case, tag: string, idle: string | null = '10000') {
  const streamId = `order-${tag}-${body === 'ledgerline_append' ? 'one' : 'general'}-${idle ? 'tx' : 'own'}-${randomUUID().slice(0, 8)}`;
  for (let i = 0; i < c.before; i++) await call(body, streamId, { name: 'before', before: 0, expected: i }, i, idle);
  const r = await call(body, streamId, c, c.expected, idle);
  const positions = r.inserted.map((i) => i.global_position);
  const skips = await t.db.query<{ projection: string; version: number }>(
    'select projection, version from projection_skips where global_position = any($1::bigint[]) order by 1, 2',
    [positions],
  );
  const [summary] = await t.db.query<{ events_applied: number; sections: string[] }>(
    `select events_applied, array(select jsonb_object_keys(sections) order by 1) as sections from order_summary_v1 where order_id = $1`,
    [streamId.slice('order-'.length)],
  );
  const [stream] = await t.db.query<{ version: number }>('select version from streams where stream_id = $1', [streamId]);
  const [counted] = await t.db.query<{ n: number }>('select count(*)::int as n from events where stream_id = $1', [streamId]);
  const logged = await t.db.query<{ p: number; at: string }>(
    `select stream_position as p, to_char(recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as at
       from events where stream_id = $1 and global_position = any($2::bigint[]) order by global_position`,
    [streamId, positions],
  );
  const inJs = c.feed?.sql === false;
  if (inJs || body === 'ledgerline_append_general') {
    // The full answer: each event's stream position and time as the log has them, and the states.
    expect(r.inserted).toEqual(logged.map((l, i) => ({ global_position: positions[i], stream_position: l.p, recorded_at: l.at })));
    expect(r.states).toBeDefined();
  } else {
    // Migration 013's answer for a projection applied in SQL: nothing the client does not read.
    expect(Object.keys(r).sort()).toEqual(['current', 'inserted', 'stored']);
    expect(r.inserted).toEqual(positions.map((p) => ({ global_position: p })));
  }
  return {
    current: r.current,
    stored: r.stored,
    inserted: logged.map((l) => l.p),
    states: inJs ? [...r.states!].sort((a, b) => a.version - b.version) : 'not read',
    skips,
    summary: summary ?? null,
    stream: stream?.version ?? null,
    events: counted!.n,
  };
}

// The one-event body's stream row (migration 013: an UPDATE first, the upsert only when it finds no
// row; 014: that UPDATE and the event's insert in one statement) under concurrent appends, as the
// client sends them (autocommit, one event, the order summary inline): the same guarantees that
// test/int/event-store.int.test.ts holds the general body to.
describe('the one-event body under concurrent appends', () => {
  const random = prng(13);
  const one = (streamId: string, expectedVersion?: number) => {
    // No id of the caller's: an id from the caller takes the general body.
    const { type, data } = randomOrderEvent(random, streamId.slice('order-'.length));
    return appendToStream(t.db, streamId, [{ type, data }], {
      projections: [orderSummary],
      ...(expectedVersion === undefined ? {} : { expectedVersion }),
    });
  };

  it('lets exactly one of 20 concurrent appends with the same expected version succeed', async () => {
    const stream = `order-race-${randomUUID().slice(0, 8)}`;
    for (let i = 0; i < 3; i++) await one(stream);
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => one(stream, 3)));
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(outcomes.length - lost.length).toBe(1);
    for (const l of lost) {
      expect(l.reason).toBeInstanceOf(WrongExpectedVersionError);
      expect(l.reason).toMatchObject({ expected: 3, actual: 4 });
    }
    const { version, events } = await readStream(t.db, stream);
    expect(version).toBe(4);
    expect(events.map((e) => e.streamPosition)).toEqual([1, 2, 3, 4]);
  });

  it('lets exactly one of 20 concurrent creators of a new stream (expected version 0) succeed', async () => {
    const stream = `order-new-${randomUUID().slice(0, 8)}`;
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => one(stream, 0)));
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    const { version, events } = await readStream(t.db, stream);
    expect(version).toBe(1);
    expect(events.map((e) => e.streamPosition)).toEqual([1]);
  });

  it('keeps every stream contiguous, new or not, under 600 concurrent appends of any version over 20 streams', async () => {
    const prefix = `order-many-${randomUUID().slice(0, 8)}`;
    const streams = Array.from({ length: 20 }, (_, i) => `${prefix}-${i}`);
    const results = await Promise.all(Array.from({ length: 600 }, (_, i) => one(streams[i % 20]!)));
    expect(new Set(results.flatMap((r) => r.globalPositions)).size).toBe(600);
    for (const stream of streams) {
      const { version, events } = await readStream(t.db, stream);
      expect(version).toBe(30);
      expect(events.map((e) => e.streamPosition)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    }
    await expectReadModelMatchesLog(t.db, 'order_summary_v1');
  });
});

// Migration 017: given the Db, the client sends the call as its own transaction, with no idle
// timeout; the one-event body then sets only lock_timeout, which bounds its own waits, since no
// statement of the transaction follows the call. Given a Tx, the rest of the caller's transaction
// is bounded and lock_timeout restored, as before.
describe("the one-event body's timeouts", () => {
  const event = (streamId: string) => {
    const { type, data } = randomOrderEvent(prng(17), streamId.slice('order-'.length));
    return { type, data };
  };

  it('sends no idle timeout given the Db, and the idle timeout given a Tx', async () => {
    const sent: unknown[][] = [];
    const query = async <T extends object>(_text: string, params: readonly unknown[] = []): Promise<T[]> => {
      sent.push([...params]);
      return [{ r: { current: 0, stored: [], inserted: [{ global_position: 1 }] } }] as T[];
    };
    const fakeDb = { query, transaction: () => Promise.reject(new Error('no transaction expected')), close: async () => {} };
    await appendToStream(fakeDb, 'order-timeouts-db', [event('order-timeouts-db')], { projections: [orderSummary] });
    await appendToStream({ query }, 'order-timeouts-tx', [event('order-timeouts-tx')], { projections: [orderSummary] });
    expect(sent.map((p) => p.slice(5, 7))).toEqual([
      ['5000', null],
      ['5000', '10000'],
    ]);
  });

  it("bounds the rest of the caller's transaction and restores lock_timeout, given a Tx", async () => {
    const stream = `order-timeouts-${randomUUID().slice(0, 8)}`;
    const settings = await t.db.transaction(async (tx) => {
      await tx.query("select set_config('lock_timeout', '1234', true)");
      await appendToStream(tx, stream, [event(stream)], { projections: [orderSummary] });
      const [row] = await tx.query<Record<string, string>>(
        `select current_setting('statement_timeout') as statement, current_setting('idle_in_transaction_session_timeout') as idle,
                current_setting('lock_timeout') as lock`,
      );
      return row;
    });
    expect(settings).toEqual({ statement: '5s', idle: '10s', lock: '1234ms' });
    const [summary] = await t.db.query('select events_applied from order_summary_v1 where order_id = $1', [stream.slice('order-'.length)]);
    expect(summary).toEqual({ events_applied: 1 });
  });

  it("bounds an own-transaction call's wait for the stream row by lock_timeout", async () => {
    const stream = `order-timeouts-${randomUUID().slice(0, 8)}`;
    await appendToStream(t.db, stream, [event(stream)], { projections: [orderSummary] });
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const holding = new Promise<void>((r) => (locked = r));
    const holder = t.db.transaction(async (tx) => {
      await tx.query('select 1 from streams where stream_id = $1 for update', [stream]);
      locked();
      await Promise.race([released, new Promise((r) => setTimeout(r, 5_000))]);
    });
    await holding;
    // The call as the client sends it given the Db, with a lock_timeout of 300 ms.
    const call = t.db.query(
      `select ledgerline_append($1::text, $2::jsonb, null, $3::jsonb, false, '300', null, false, false) as r`,
      [stream, JSON.stringify([{ id: randomUUID(), type: 'OrderNoted', data: {}, metadata: {} }]), JSON.stringify([{ name: 'order_summary', types: [], sql: true }])],
    );
    // Without lock_timeout it would wait for the holder (5 s here) and then append.
    await expect(call).rejects.toMatchObject({ sqlState: '55P03' });
    release();
    await holder;
    expect(await t.db.query('select version from streams where stream_id = $1', [stream])).toEqual([{ version: 1 }]);
  });
});

describe('the one-event body and the general body of ledgerline_append', () => {
  it.each(CASES)('answer and write the same while the version is live: $name', async (c) => {
    const one = await outcome('ledgerline_append', c, 'live');
    expect(one).toEqual(await outcome('ledgerline_append_general', c, 'live'));
    expect(await outcome('ledgerline_append', c, 'live', null)).toEqual(one);
    if (c.live) expect(one).toMatchObject(c.live);
  });

  describe('while a blue-green rebuild runs', () => {
    beforeAll(async () => {
      const { lease } = await acquireRebuild(t.db, orderSummary, { owner: 'append-bodies', mode: 'blue-green' });
      await startRebuild(t.db, orderSummary, lease);
    });

    it.each(CASES)('answer and write the same: $name', async (c) => {
      const one = await outcome('ledgerline_append', c, 'rebuilding');
      expect(one).toEqual(await outcome('ledgerline_append_general', c, 'rebuilding'));
      expect(await outcome('ledgerline_append', c, 'rebuilding', null)).toEqual(one);
      if (c.rebuilding) expect(one).toMatchObject(c.rebuilding);
    });
  });
});
