import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../functions/db/types.ts';
import { AppError, WrongExpectedVersionError } from '../../functions/core/errors.ts';
import { appendToStream, readAll, readStream, LIMITS } from '../../functions/core/event-store/index.ts';
import type { NewEvent } from '../../functions/core/event-store/types.ts';
import { UUID_V7, timeOfEventId } from '../support/event-ids.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
let db: Db;

beforeAll(async () => {
  t = await createTestDatabase({ max: 40 });
  db = t.db;
});
afterAll(async () => t?.drop());

const ev = (type = 'Something', data: Record<string, unknown> = { n: 1 }, id?: string): NewEvent => ({
  ...(id ? { id } : {}),
  type,
  data,
});

const append = (streamId: string, events: NewEvent[], expectedVersion?: number | 'any') =>
  db.transaction((tx) => appendToStream(tx, streamId, events, expectedVersion === undefined ? {} : { expectedVersion }));

async function snapshot() {
  const events = await db.query('select * from events order by global_position');
  const streams = await db.query('select stream_id, version from streams order by stream_id');
  return { events, streams };
}

describe('appending and reading', () => {
  it('appends to a new stream and reads the events back in order with their metadata', async () => {
    const stream = `s-${randomUUID()}`;
    const result = await append(stream, [ev('A', { a: 1 }), ev('B', { b: [1, 2] })], 0);
    expect(result.streamVersion).toBe(2);
    expect(result.duplicate).toBe(false);
    expect(result.globalPositions[1]).toBeGreaterThan(result.globalPositions[0]!);

    const read = await readStream(db, stream);
    expect(read.version).toBe(2);
    expect(read.events.map((e) => [e.type, e.streamPosition, e.globalPosition])).toEqual([
      ['A', 1, result.globalPositions[0]],
      ['B', 2, result.globalPositions[1]],
    ]);
    expect(read.events[1]!.data).toEqual({ b: [1, 2] });
    expect(read.events[0]!.metadata.correlationId).toEqual(read.events[1]!.metadata.correlationId);
    expect(read.events[0]!.recordedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);

    const page = await readStream(db, stream, { fromVersion: 2, limit: 5 });
    expect(page.events.map((e) => e.type)).toEqual(['B']);
    const all = await readAll(db, result.globalPositions[0]! - 1, 2);
    expect(all.map((e) => e.id)).toEqual(read.events.map((e) => e.id));
  });

  it('records correlation and causation ids from the options unless the event carries its own', async () => {
    const stream = `s-${randomUUID()}`;
    await db.transaction((tx) =>
      appendToStream(tx, stream, [ev('A'), { type: 'B', data: {}, metadata: { correlationId: 'mine' } }], {
        correlationId: 'corr-1',
        causationId: 'cause-1',
      }),
    );
    const { events } = await readStream(db, stream);
    expect(events[0]!.metadata).toEqual({ correlationId: 'corr-1', causationId: 'cause-1' });
    expect(events[1]!.metadata).toEqual({ correlationId: 'mine', causationId: 'cause-1' });
  });

  it('records the appending transaction id on every event', async () => {
    const stream = `s-${randomUUID()}`;
    const xid = await db.transaction(async (tx) => {
      await appendToStream(tx, stream, [ev(), ev()]);
      const [row] = await tx.query<{ xid: string }>('select pg_current_xact_id()::text as xid');
      return row!.xid;
    });
    const rows = await db.query<{ x: string }>('select transaction_id::text as x from events where stream_id = $1', [stream]);
    expect(rows.map((r) => r.x)).toEqual([xid, xid]);
  });

  it("bounds the rest of the caller's transaction with the append's timeouts, and restores lock_timeout", async () => {
    const settings = await db.transaction(async (tx) => {
      await tx.query("select set_config('lock_timeout', '1234', true)");
      await appendToStream(tx, `timeouts-${randomUUID()}`, [{ type: 'A', data: {} }]);
      const [row] = await tx.query<Record<string, string>>(
        `select current_setting('statement_timeout') as statement, current_setting('idle_in_transaction_session_timeout') as idle,
                current_setting('lock_timeout') as lock, current_setting('plan_cache_mode') as plans`,
      );
      return row;
    });
    // The function's own SET clause (plan_cache_mode) ends with it; its set_config(…, true) do not.
    expect(settings).toEqual({ statement: '5s', idle: '10s', lock: '1234ms', plans: 'auto' });
  });

  it('stores time-ordered ids (UUID version 7) for the events it names, and a caller\'s ids as given', async () => {
    const stream = `s-${randomUUID()}`;
    const mine = randomUUID();
    const before = Date.now();
    await append(stream, [ev('A'), ev('B')], 0);
    await appendToStream(db, stream, [ev('C')]); // given the Db: the one-event body
    await append(stream, [ev('D', { n: 1 }, mine)]);
    const after = Date.now();
    const rows = await db.query<{ id: string }>('select event_id::text as id from events where stream_id = $1 order by stream_position', [stream]);
    expect(rows.map((r) => r.id)).toHaveLength(4);
    for (const { id } of rows.slice(0, 3)) {
      expect(id).toMatch(UUID_V7);
      const time = timeOfEventId(id);
      expect(time).toBeGreaterThanOrEqual(before);
      expect(time).toBeLessThanOrEqual(after);
    }
    expect(rows[3]!.id).toBe(mine);
  });

  it('answers STREAM_NOT_FOUND for a stream that was never written', async () => {
    await expect(readStream(db, 'nobody-here')).rejects.toMatchObject({ code: 'STREAM_NOT_FOUND' });
  });
});

describe('optimistic concurrency', () => {
  it('lets exactly one of 20 concurrent appends with the same expected version succeed', async () => {
    const stream = `s-${randomUUID()}`;
    await append(stream, [ev(), ev(), ev()]);
    const outcomes = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => append(stream, [ev('Raced', { i })], 3)),
    );
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(19);
    for (const l of lost) {
      expect(l.reason).toBeInstanceOf(WrongExpectedVersionError);
      expect(l.reason).toMatchObject({ code: 'WRONG_EXPECTED_VERSION', expected: 3, actual: 4 });
    }
    const { version, events } = await readStream(db, stream);
    expect(version).toBe(4);
    expect(events.map((e) => e.streamPosition)).toEqual([1, 2, 3, 4]);
  });

  it('lets exactly one of concurrent creators of a new stream (expected version 0) succeed', async () => {
    const stream = `s-${randomUUID()}`;
    const outcomes = await Promise.allSettled(Array.from({ length: 10 }, () => append(stream, [ev()], 0)));
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    const { events } = await readStream(db, stream);
    expect(events.map((e) => e.streamPosition)).toEqual([1]);
  });

  it('keeps global positions unique and every stream contiguous under 1,000 concurrent appends over 50 streams', async () => {
    const prefix = `c-${randomUUID()}`;
    const streams = Array.from({ length: 50 }, (_, i) => `${prefix}-${i}`);
    const results = await Promise.all(
      Array.from({ length: 1000 }, (_, i) => append(streams[i % 50]!, [ev('E', { i }), ev('F', { i })])),
    );
    const positions = results.flatMap((r) => r.globalPositions);
    expect(new Set(positions).size).toBe(2000);

    const rows = await db.query<{ stream_id: string; positions: number[]; version: number }>(
      `select e.stream_id, array_agg(e.stream_position order by e.stream_position)::int[] as positions, s.version
         from events e join streams s using (stream_id)
        where e.stream_id like $1
        group by e.stream_id, s.version`,
      [`${prefix}-%`],
    );
    expect(rows).toHaveLength(50);
    for (const row of rows) {
      expect(row.positions).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
      expect(row.version).toBe(40);
    }
    // Within one append, global order follows stream order.
    for (const r of results) expect(r.globalPositions[1]).toBeGreaterThan(r.globalPositions[0]!);
  });
});

describe('idempotent appends', () => {
  it('answers a retry with the original result and writes nothing', async () => {
    const stream = `s-${randomUUID()}`;
    const events = [ev('A', { x: 1 }, randomUUID()), ev('B', { y: { z: 2 } }, randomUUID())];
    const first = await append(stream, events, 0);
    const before = await snapshot();
    // Same ids and content, upper-case ids and reordered keys, and an expected version that is now stale.
    const retry = await append(
      stream,
      events.map((e) => ({ ...e, id: e.id!.toUpperCase(), data: Object.fromEntries(Object.entries(e.data).reverse()) })),
      0,
    );
    expect(retry).toEqual({ ...first, duplicate: true });
    expect(await snapshot()).toEqual(before);
  });

  it('writes once when the same events are sent twice at the same time', async () => {
    const stream = `s-${randomUUID()}`;
    const events = [ev('A', { x: 1 }, randomUUID())];
    const [a, b] = await Promise.all([append(stream, events), append(stream, events)]);
    expect([a.duplicate, b.duplicate].sort()).toEqual([false, true]);
    expect(a.globalPositions).toEqual(b.globalPositions);
    expect((await readStream(db, stream)).events).toHaveLength(1);
  });

  it('refuses an id reused with different content, or in another stream, with DUPLICATE_EVENT_ID', async () => {
    const stream = `s-${randomUUID()}`;
    const id = randomUUID();
    await append(stream, [ev('A', { x: 1 }, id)]);
    const before = await snapshot();
    await expect(append(stream, [ev('A', { x: 2 }, id)])).rejects.toMatchObject({ code: 'DUPLICATE_EVENT_ID' });
    await expect(append(stream, [ev('A', { x: 1 }, id), ev('A', { x: 1 })])).rejects.toMatchObject({
      code: 'DUPLICATE_EVENT_ID',
    });
    await expect(append(`${stream}-other`, [ev('A', { x: 1 }, id)])).rejects.toMatchObject({
      code: 'DUPLICATE_EVENT_ID',
    });
    expect(await snapshot()).toEqual(before);
  });
});

describe('bad input', () => {
  const big = 'x'.repeat(LIMITS.eventBytes);
  const deep = (n: number): unknown => (n === 0 ? 1 : { d: deep(n - 1) });
  const cases: Array<[string, string, unknown, unknown, string]> = [
    ['an empty stream id', '', [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id with a control character', 'a\u0000b', [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id with a newline', 'a\nb', [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id that is too long', 'x'.repeat(LIMITS.streamIdLength + 1), [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id with surrounding spaces', ' s ', [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id with a lone surrogate', 's\ud800', [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id with a slash', '../etc/passwd', [ev()], undefined, 'VALIDATION_FAILED'],
    ['a stream id that is ".."', '..', [ev()], undefined, 'VALIDATION_FAILED'],
    ['no events', 'ok', [], undefined, 'VALIDATION_FAILED'],
    ['events that are not an array', 'ok', { type: 'A' }, undefined, 'VALIDATION_FAILED'],
    ['too many events', 'ok', Array.from({ length: LIMITS.eventsPerAppend + 1 }, () => ev()), undefined, 'VALIDATION_FAILED'],
    ['an event without a type', 'ok', [{ data: {} }], undefined, 'VALIDATION_FAILED'],
    ['an event type with spaces', 'ok', [{ type: 'Order Created', data: {} }], undefined, 'VALIDATION_FAILED'],
    ['an event type that is too long', 'ok', [{ type: 'A'.repeat(LIMITS.eventTypeLength + 1), data: {} }], undefined, 'VALIDATION_FAILED'],
    ['data that is an array', 'ok', [{ type: 'A', data: [1] }], undefined, 'VALIDATION_FAILED'],
    ['data that is null', 'ok', [{ type: 'A', data: null }], undefined, 'VALIDATION_FAILED'],
    ['data that is a string', 'ok', [{ type: 'A', data: '{}' }], undefined, 'VALIDATION_FAILED'],
    ['data with a NUL character', 'ok', [{ type: 'A', data: { s: 'a\u0000' } }], undefined, 'VALIDATION_FAILED'],
    ['data with a NUL character in a key', 'ok', [{ type: 'A', data: { 'a\u0000': 1 } }], undefined, 'VALIDATION_FAILED'],
    ['data with a lone surrogate', 'ok', [{ type: 'A', data: { s: '\udc00' } }], undefined, 'VALIDATION_FAILED'],
    ['data nested too deep', 'ok', [{ type: 'A', data: deep(LIMITS.jsonDepth + 1) }], undefined, 'VALIDATION_FAILED'],
    ['a non-finite number', 'ok', [{ type: 'A', data: { n: Number.NaN } }], undefined, 'VALIDATION_FAILED'],
    ['metadata that is an array', 'ok', [{ type: 'A', data: {}, metadata: [] }], undefined, 'VALIDATION_FAILED'],
    ['an unknown event field', 'ok', [{ type: 'A', data: {}, extra: 1 }], undefined, 'VALIDATION_FAILED'],
    ['an id that is not a UUID', 'ok', [{ id: 'nope', type: 'A', data: {} }], undefined, 'VALIDATION_FAILED'],
    ['the same id twice', 'ok', [ev('A', {}, '0b9a3e4e-7f1c-4a57-9a53-3c1f0c3c0a11'), ev('A', {}, '0B9A3E4E-7F1C-4A57-9A53-3C1F0C3C0A11')], undefined, 'VALIDATION_FAILED'],
    ['a negative expected version', 'ok', [ev()], -1, 'VALIDATION_FAILED'],
    ['a fractional expected version', 'ok', [ev()], 1.5, 'VALIDATION_FAILED'],
    ['an expected version that is a string', 'ok', [ev()], '3', 'VALIDATION_FAILED'],
    ['an event over the size limit', 'ok', [{ type: 'A', data: { big } }], undefined, 'PAYLOAD_TOO_LARGE'],
    ['an append over the total size limit', 'ok', Array.from({ length: 20 }, () => ({ type: 'A', data: { s: 'y'.repeat(60_000) } })), undefined, 'PAYLOAD_TOO_LARGE'],
    ['one bad event among good ones', 'ok', [ev(), { type: 'A', data: 5 }, ev()], undefined, 'VALIDATION_FAILED'],
  ];

  it.each(cases)('rejects %s with its code and leaves the tables unchanged', async (_name, stream, events, expectedVersion, code) => {
    const before = await snapshot();
    const error = await db
      .transaction((tx) => appendToStream(tx, stream, events as NewEvent[], { expectedVersion: expectedVersion as number }))
      .then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(AppError);
    expect(error).toMatchObject({ code });
    expect(await snapshot()).toEqual(before);
  });

  it('rejects a wrong expected version with WRONG_EXPECTED_VERSION and leaves the tables unchanged', async () => {
    const stream = `s-${randomUUID()}`;
    await append(stream, [ev()]);
    const before = await snapshot();
    await expect(append(stream, [ev()], 5)).rejects.toMatchObject({ code: 'WRONG_EXPECTED_VERSION', expected: 5, actual: 1 });
    await expect(append(`${stream}-new`, [ev()], 2)).rejects.toMatchObject({ code: 'WRONG_EXPECTED_VERSION', expected: 2, actual: 0 });
    expect(await snapshot()).toEqual(before);
  });

  it('rejects bad read arguments', async () => {
    await expect(readStream(db, 'x', { fromVersion: 0 })).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
    await expect(readStream(db, 'x', { limit: 100_000 })).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
    await expect(readAll(db, -1)).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
  });
});
