import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireProjectorLease, projectBatch, type Gap } from '../../functions/core/async/projector.ts';
import { DatabaseError, DuplicateEventIdError, WrongExpectedVersionError } from '../../functions/core/errors.ts';
import { appendToStream, readAll, readStream } from '../../functions/core/event-store/index.ts';
import { ensureProjection, resolveReadTarget } from '../../functions/core/projections/ensure.ts';
import { countSkips } from '../../functions/core/rebuild/index.ts';
import { loadRuntimeConfig, runtimeDb } from '../../functions/db/runtime.ts';
import type { Db } from '../../functions/db/types.ts';
import { customerTotals, readCustomerTotals } from '../../functions/domain/customer-totals.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { PROJECTIONS } from '../../functions/domain/projections.ts';
import { createRebuildStepHandler, type RebuildInput } from '../../functions/workflow/rebuild-steps.ts';
import { foldCustomerTotals } from '../support/customers.ts';
import { startLocalDataApi, type LocalDataApi } from '../support/data-api-local.ts';
import { committedEvents, expectReadModelMatchesLog, prng, randomOrderEvent } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

/**
 * One behaviour suite, two drivers: the core (event store, inline projection, rebuild steps, async
 * projector) must behave the same over postgres.js and over the RDS Data API. The Data API side runs
 * the real SDK client against data-api-local in front of the same embedded PostgreSQL. A second
 * postgres.js pool plays "another Lambda" where a test needs a concurrent writer or a held
 * transaction.
 */
const DRIVERS = [
  { name: 'postgres.js', open: async (t: TestDatabase) => ({ db: t.db, stop: async () => {} }) },
  {
    name: 'Data API',
    open: async (t: TestDatabase) => {
      const api: LocalDataApi = await startLocalDataApi(t.url);
      return { db: api.db, stop: () => api.stop() };
    },
  },
] as const;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const created = (orderId: string, customerId = `c-${orderId}`) => ({
  id: randomUUID(),
  type: 'OrderCreated',
  data: { orderId, occurredAt: new Date().toISOString(), customerId, totalAmount: 10, currency: 'EUR', items: [] },
});

/** `count` random order events over `orders` orders, one append each, inline projections on. */
async function appendOrders(db: Db, prefix: string, count: number, orders: number, seed: number): Promise<void> {
  const random = prng(seed);
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${i % orders}`;
    await db.transaction((tx) => appendToStream(tx, `order-${id}`, [randomOrderEvent(random, id)], { projections: PROJECTIONS }));
  }
}

describe.each(DRIVERS)('over $name', (driver) => {
  let t: TestDatabase;
  let db: Db;
  let other: Db;
  let stop: () => Promise<void>;

  beforeAll(async () => {
    t = await createTestDatabase({ max: 8 });
    ({ db, stop } = await driver.open(t));
    other = t.connect(4);
    for (const p of PROJECTIONS) await ensureProjection(db, p);
  });
  afterAll(async () => {
    await stop?.();
    await t?.drop();
  });

  describe('the event store', () => {
    it('appends and reads back with positions as numbers, data as JSON and the time with milliseconds', async () => {
      const result = await db.transaction((tx) => appendToStream(tx, 'es-1', [created('es-1'), created('es-1')]));
      expect(result).toMatchObject({ streamId: 'es-1', streamVersion: 2, duplicate: false });
      expect(result.globalPositions).toHaveLength(2);
      expect(typeof result.globalPositions[0]).toBe('number');
      const read = await readStream(db, 'es-1');
      expect(read.version).toBe(2);
      expect(read.events.map((e) => e.streamPosition)).toEqual([1, 2]);
      expect(read.events[0]!.globalPosition).toBe(result.globalPositions[0]);
      expect(read.events[0]!.data).toMatchObject({ orderId: 'es-1', totalAmount: 10, items: [] });
      expect(read.events[0]!.recordedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3,6}Z$/);
      const all = await readAll(db, result.globalPositions[0]! - 1, 10);
      expect(all.map((e) => e.globalPosition)).toEqual(result.globalPositions);
    });

    it('checks the expected version, returns the original result for a retry, and refuses a reused id', async () => {
      const first = created('es-2');
      const original = await db.transaction((tx) => appendToStream(tx, 'es-2', [first], { expectedVersion: 0 }));
      await expect(db.transaction((tx) => appendToStream(tx, 'es-2', [created('es-2')], { expectedVersion: 5 }))).rejects.toBeInstanceOf(
        WrongExpectedVersionError,
      );
      const retry = await db.transaction((tx) => appendToStream(tx, 'es-2', [first], { expectedVersion: 0 }));
      expect(retry).toMatchObject({ duplicate: true, globalPositions: original.globalPositions });
      // The same id on another stream is caught by the unique index: the SQLSTATE and constraint
      // must come through the driver's error mapping for this to be a 409, not a 503.
      await expect(db.transaction((tx) => appendToStream(tx, 'es-3', [first]))).rejects.toBeInstanceOf(DuplicateEventIdError);
    });

    it('rolls a transaction back when its callback throws, and maps SQL errors with their SQLSTATE', async () => {
      await expect(
        db.transaction(async (tx) => {
          await appendToStream(tx, 'es-4', [created('es-4')]);
          throw new Error('changed my mind');
        }),
      ).rejects.toThrow('changed my mind');
      await expect(readStream(db, 'es-4')).rejects.toMatchObject({ code: 'STREAM_NOT_FOUND' });
      const error = await db.query('select * from no_such_table').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DatabaseError);
      expect(error).toMatchObject({ sqlState: '42P01', retryable: false });
    });

    it('round-trips the value types the Db contract names', async () => {
      const [row] = await db.query<Record<string, unknown>>(
        `select $1::bigint as big, $2::int as small, $3::boolean as yes, $4::jsonb as doc, $5::text as nothing,
                $6::double precision as ratio, $7::numeric::text as amount, ($8::timestamptz + interval '1 millisecond') as at,
                pg_current_xact_id()::text as xid, array_length(array(select jsonb_array_elements_text($9::jsonb)), 1) as n`,
        [2 ** 40, 7, true, JSON.stringify({ a: [1, 'x'] }), null, 0.25, '12.50', new Date('2026-11-29T10:00:00.123Z'), JSON.stringify(['a', 'b', 'c'])],
      );
      expect(row).toMatchObject({ big: 2 ** 40, small: 7, yes: true, doc: { a: [1, 'x'] }, nothing: null, ratio: 0.25, amount: '12.50', n: 3 });
      expect(row!.at).toBeInstanceOf(Date);
      expect((row!.at as Date).toISOString()).toBe('2026-11-29T10:00:00.124Z');
      expect(row!.xid).toMatch(/^\d+$/);
    });
  });

  describe('the inline projection', () => {
    it('keeps the order summary equal to a fold of the log', async () => {
      await appendOrders(db, 'inl', 40, 7, 11);
      const target = (await resolveReadTarget(db, 'order_summary'))!;
      await expectReadModelMatchesLog(db, target.table);
    });
  });

  describe('the rebuild steps', () => {
    it('rebuild blue-green through the step handler while another process appends, and lose nothing', async () => {
      await appendOrders(other, 'rb', 60, 9, 12);
      let writing = true;
      const writer = (async () => {
        const r = prng(13);
        while (writing) {
          const id = `rb-${Math.floor(r() * 12)}`;
          await other.transaction((tx) => appendToStream(tx, `order-${id}`, [randomOrderEvent(r, id)], { projections: PROJECTIONS }));
          await sleep(3);
        }
      })();
      const step = createRebuildStepHandler({ db, batchSize: 25, budgetMs: 2_000 });
      let state: RebuildInput = { projection: 'order_summary', mode: 'blue-green' };
      try {
        state = await step({ step: 'acquire', state });
        state = await step({ step: 'start', state });
        do state = await step({ step: 'replay', state });
        while (!state.done);
        for (let attempt = 0; attempt < 20 && !state.flipped; attempt++) {
          state = await step({ step: 'drain', state });
          state = await step({ step: 'flip', state });
        }
        expect(state.flipped).toBe(true);
        state = await step({ step: 'release', state });
      } finally {
        writing = false;
        await writer;
      }
      const target = (await resolveReadTarget(db, 'order_summary'))!;
      expect(target.version).toBeGreaterThan(1);
      await expectReadModelMatchesLog(db, target.table);
      expect(await countSkips(db, { projection: 'order_summary', version: target.version })).toBe(0);
    });

    it('reports a flip that timed out on its lock as not flipped (lock_timeout mapped to 55P03)', async () => {
      const step = createRebuildStepHandler({ db, batchSize: 100 });
      let state: RebuildInput = { projection: 'order_summary', mode: 'in-place' };
      state = await step({ step: 'acquire', state });
      state = await step({ step: 'start', state });
      do state = await step({ step: 'replay', state });
      while (!state.done);
      // An append of another process holds the projection's shared lock while the flip asks for it.
      let release!: () => void;
      let locked!: () => void;
      const isLocked = new Promise<void>((r) => (locked = r));
      const holder = other.transaction(async (tx) => {
        await appendToStream(tx, 'order-rb-hold', [created('rb-hold')], { projections: [orderSummary] });
        locked();
        await new Promise<void>((r) => (release = r));
      });
      await isLocked;
      const blocked = await step({ step: 'flip', state: { ...state, lockTimeoutMs: 50 } });
      expect(blocked.flipped).toBe(false);
      release();
      await holder;
      state = await step({ step: 'drain', state: blocked });
      state = await step({ step: 'flip', state });
      expect(state.flipped).toBe(true);
      await step({ step: 'release', state });
      const target = (await resolveReadTarget(db, 'order_summary'))!;
      await expectReadModelMatchesLog(db, target.table);
    });
  });

  describe('the async projector', () => {
    it('projects past an open transaction, records its gap, and applies it when it commits', async () => {
      const lease = (await acquireProjectorLease(db, customerTotals, { owner: `p-${driver.name}`, leaseMs: 600_000 }))!;
      const project = async () => {
        while ((await projectBatch(db, customerTotals, lease, { batchSize: 50 })).read >= 50);
      };
      await project();
      let commit!: () => void;
      let drawn!: (p: number) => void;
      const position = new Promise<number>((r) => (drawn = r));
      const slow = other.transaction(async (tx) => {
        const r = await appendToStream(tx, 'order-as-slow', [created('as-slow', 'c-async')]);
        drawn(r.globalPositions[0]!);
        await new Promise<void>((resolve) => (commit = resolve));
      });
      const slowPosition = await position;
      await other.transaction((tx) => appendToStream(tx, 'order-as-fast', [created('as-fast', 'c-async')]));
      await project();
      const gaps = async () => (await db.query<{ gaps: Gap[] }>("select gaps from projections where name = 'customer_totals'"))[0]!.gaps.map((g) => g.position);
      expect(await gaps()).toEqual([slowPosition]);
      const table = (await resolveReadTarget(db, 'customer_totals'))!.table;
      expect((await readCustomerTotals(db, table, 'c-async'))[0]).toMatchObject({ orders: 1 });
      commit();
      await slow;
      await project();
      expect(await gaps()).toEqual([]);
      const expected = foldCustomerTotals(await committedEvents(db));
      expect(await readCustomerTotals(db, table)).toEqual(expected);
    });
  });
});

describe('Data API calls per operation (the figures in the README)', () => {
  it('costs 1 call per append with one live inline projection applied in SQL (3 in a caller transaction), with or without caller-chosen ids, and 6 per replay batch', async () => {
    const t = await createTestDatabase();
    const api = await startLocalDataApi(t.url);
    try {
      for (const p of PROJECTIONS) await ensureProjection(api.db, p);
      const count = async (run: () => Promise<unknown>) => {
        api.calls.clear();
        await run();
        return Object.fromEntries(api.calls);
      };
      await api.db.transaction((tx) => appendToStream(tx, 'order-rt-0', [created('rt-0')], { projections: PROJECTIONS }));
      // Given the Db, as the HTTP API appends: one autocommit ExecuteStatement.
      const plain = await count(() => appendToStream(api.db, 'order-rt-1', [{ type: 'OrderCreated', data: created('rt-1').data }], { projections: PROJECTIONS }));
      expect(plain).toEqual({ ExecuteStatement: 1 });
      const withIds = await count(() => appendToStream(api.db, 'order-rt-2', [created('rt-2')], { projections: PROJECTIONS }));
      expect(withIds).toEqual({ ExecuteStatement: 1 });
      // Inside a caller's transaction (a decision appended with what it was decided on).
      const inTx = await count(() => api.db.transaction((tx) => appendToStream(tx, 'order-rt-3', [created('rt-3')], { projections: PROJECTIONS })));
      expect(inTx).toEqual({ BeginTransaction: 1, ExecuteStatement: 1, CommitTransaction: 1 });
      // The documents were written by the append's own call: the projection is not left behind.
      const rows = await api.db.query<{ order_id: string; events_applied: number }>('select order_id, events_applied from order_summary_v1 order by 1');
      expect(rows).toEqual(['rt-0', 'rt-1', 'rt-2', 'rt-3'].map((order_id) => ({ order_id, events_applied: 1 })));
      const step = createRebuildStepHandler({ db: api.db, batchSize: 1000 });
      let state: RebuildInput = await step({ step: 'acquire', state: { projection: 'order_summary', mode: 'in-place' } });
      state = await step({ step: 'start', state });
      const batch = await count(async () => {
        state = await step({ step: 'replay', state });
      });
      expect(state.done).toBe(true); // one batch: the whole replay
      // Timeouts, fencing, the batch (read, apply and skip deletion in one statement), checkpoint.
      expect(batch).toEqual({ BeginTransaction: 1, ExecuteStatement: 4, CommitTransaction: 1 });
    } finally {
      await api.stop();
      await t.drop();
    }
  });
});

describe('driver choice by configuration', () => {
  it('refuses an incomplete or unknown configuration at start', () => {
    expect(() => loadRuntimeConfig({ DB_DRIVER: 'mysql' })).toThrow(/DB_DRIVER/);
    expect(() => loadRuntimeConfig({ DB_DRIVER: 'data-api', DB_CLUSTER_ARN: 'arn:x' })).toThrow(/DB_SECRET_ARN/);
    expect(() => loadRuntimeConfig({})).toThrow(/DATABASE_URL/);
    expect(loadRuntimeConfig({ DATABASE_URL: 'postgres://x@127.0.0.1/db' })).toMatchObject({ kind: 'url' });
  });

  it("runs a Lambda's runtime Db over the Data API when DB_DRIVER=data-api", async () => {
    const t = await createTestDatabase();
    const api = await startLocalDataApi(t.url);
    const saved = { ...process.env };
    try {
      // The SDK's default chain reads the region and credentials from the environment, as in Lambda.
      Object.assign(process.env, { AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'local', AWS_SECRET_ACCESS_KEY: 'local' });
      const config = loadRuntimeConfig({
        DB_DRIVER: 'data-api',
        DB_CLUSTER_ARN: 'arn:aws:rds:us-east-1:123456789012:cluster:local',
        DB_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:local',
        DB_NAME: t.name,
        DATA_API_ENDPOINT: api.endpoint,
      });
      expect(config.kind).toBe('data-api');
      const db = runtimeDb(config);
      // The configuration names no host and no URL: the endpoint is the only way to the database.
      await db.transaction((tx) => appendToStream(tx, 'cfg-1', [created('cfg-1')]));
      expect((await readStream(db, 'cfg-1')).version).toBe(1);
    } finally {
      process.env = saved;
      await api.stop();
      await t.drop();
    }
  });
});
