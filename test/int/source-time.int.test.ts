import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendToStream } from '../../functions/core/event-store/append.ts';
import { ValidationError } from '../../functions/core/errors.ts';
import { ensureProjection } from '../../functions/core/projections/ensure.ts';
import { runRebuild } from '../../functions/core/rebuild/index.ts';
import type { Db } from '../../functions/db/types.ts';
import { validateObservation } from '../../functions/domain/events.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { sourceTime } from '../../functions/domain/source-time.ts';
import { expectReadModelMatchesLog } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

/**
 * The order summary computes its documents in SQL (ledgerline_source_time, migration 004); the edge
 * validates and the write side decides with the JS twin (domain/source-time.ts), and the tests'
 * oracle folds with it. A time the two read differently would put a different section in the read
 * model than the decision was taken on, so they must agree on every input, odd ones first.
 */
let t: TestDatabase;
let db: Db;

beforeAll(async () => {
  t = await createTestDatabase();
  db = t.db;
  await ensureProjection(db, orderSummary);
});
afterAll(async () => t?.drop());

const ODD = [
  '2026-01-01T00:00:00Z',
  '2026-01-01T00:00:00.1Z',
  '2026-01-01T00:00:00.123456Z',
  '2026-01-01T00:00:00.9999999Z', // PostgreSQL alone would round this up to the next second
  '2026-01-01T00:00:00.999999999+14:00',
  '2026-06-30T23:59:59.5-09:30',
  '2024-02-29T12:00:00Z',
  '2026-02-29T12:00:00Z', // no such day: Date.parse alone reads March 1st
  '2026-02-30T00:00:00Z',
  '2026-04-31T00:00:00Z',
  '2026-13-01T00:00:00Z',
  '2026-01-01T24:00:00Z',
  '2026-01-01T23:59:60Z',
  '2026-01-01T00:00:00+15:00',
  '2026-01-01T00:00:00',
  '2026-01-01 00:00:00Z',
  '2026-01-01T00:00Z',
  '0000-01-01T00:00:00Z',
  '0999-12-31T00:00:00Z',
  '1000-01-01T00:00:00+01:00',
  '9998-12-31T23:59:59-14:00',
  '9999-01-01T00:00:00Z',
  'Jan 1 2026',
  '',
  '2026-01-01T00:00:00Z ',
  // The canonical form (toISOString's), which SQL reads on a shorter path: valid and invalid.
  '2026-03-04T05:06:07.089Z',
  '2026-02-30T00:00:00.000Z',
  '2026-01-01T24:00:00.000Z',
  '2026-01-01T23:59:60.000Z',
  '2026-13-01T00:00:00.000Z',
  '9999-01-01T00:00:00.000Z',
  '0999-12-31T23:59:59.999Z',
  '2026-01-01T00:00:00.00AZ',
];

async function sqlTimes(values: readonly unknown[]): Promise<Array<string | null>> {
  const rows = await db.query<{ t: string | null }>(
    'select ledgerline_source_time(v->>0) as t from jsonb_array_elements($1::jsonb) with ordinality as x(v, i) order by i',
    [JSON.stringify(values.map((v) => [v]))],
  );
  return rows.map((r) => r.t);
}

describe('the source time, in SQL and in JS', () => {
  it('reads odd values the same way, and refuses what either side could misread', async () => {
    const values: unknown[] = [...ODD, 42, null, true, { at: '2026-01-01T00:00:00Z' }];
    const js = values.map((v) => sourceTime(v) ?? null);
    expect(await sqlTimes(values)).toEqual(js);
    expect(js.slice(0, 7)).toEqual([
      '2026-01-01T00:00:00.000Z',
      '2026-01-01T00:00:00.100Z',
      '2026-01-01T00:00:00.123Z',
      '2026-01-01T00:00:00.999Z',
      '2025-12-31T10:00:00.999Z',
      '2026-07-01T09:29:59.500Z',
      '2024-02-29T12:00:00.000Z',
    ]);
    expect(js.slice(7, 19).every((v) => v === null)).toBe(true);
  });

  it('agrees on generated ISO-like strings (fields in and out of range, any fraction, any offset)', async () => {
    const two = (max: number) => fc.integer({ min: 0, max }).map((n) => String(n).padStart(2, '0'));
    const iso = fc
      .tuple(
        fc.integer({ min: 990, max: 10_000 }).map((y) => String(y).padStart(4, '0')),
        two(14),
        two(32),
        two(25),
        two(61),
        two(61),
        fc.option(fc.stringMatching(/^\.\d{1,10}$/), { nil: '' }),
        fc.oneof(fc.constant('Z'), fc.tuple(fc.constantFrom('+', '-'), two(16), two(60)).map(([s, h, m]) => `${s}${h}:${m}`)),
      )
      .map(([y, mo, d, h, mi, s, frac, zone]) => `${y}-${mo}-${d}T${h}:${mi}:${s}${frac}${zone}`);
    const samples = fc.sample(iso, { numRuns: 2_000, seed: 4242 });
    const js = samples.map((v) => sourceTime(v) ?? null);
    expect(await sqlTimes(samples)).toEqual(js);
    // Both kinds occur, so the comparison is not between two columns of nulls.
    expect(js.filter((v) => v !== null).length).toBeGreaterThan(200);
    expect(js.filter((v) => v === null).length).toBeGreaterThan(200);
  });

  it('refuses at the edge an observation whose time the projection would not read (February 30th)', () => {
    const body = (occurredAt: string) => ({
      id: '0f0e0d0c-0b0a-4909-8807-060504030201',
      type: 'ShippingCalculated',
      data: { orderId: 'o1', occurredAt, shippingCost: 1, estimatedDays: 2 },
    });
    expect(() => validateObservation('o1', body('2026-02-30T10:00:00Z'))).toThrow(ValidationError);
    expect(validateObservation('o1', body('2026-02-28T10:00:00.1234567+02:00')).data.occurredAt).toBe('2026-02-28T10:00:00.1234567+02:00');
  });

  it('builds the same documents from odd times inline and by a rebuild as the JS fold does', async () => {
    // The generic stream route takes any data: the projection falls back to the recorded time.
    let i = 0;
    for (const occurredAt of [...ODD, undefined, 17]) {
      const orderId = `st-${i++ % 4}`;
      await appendToStream(db, `order-${orderId}`, [{ type: i % 2 ? 'PaymentProcessed' : 'ShippingCalculated', data: { orderId, n: i, ...(occurredAt === undefined ? {} : { occurredAt }) } }], {
        projections: [orderSummary],
      });
    }
    await expectReadModelMatchesLog(db, 'order_summary_v1');
    await runRebuild(db, orderSummary, { owner: 'test', mode: 'blue-green' });
    const [{ version } = { version: 0 }] = await db.query<{ version: number }>(
      "select version from projections where name = 'order_summary' and state = 'live'",
    );
    expect(version).toBe(2);
    await expectReadModelMatchesLog(db, 'order_summary_v2');
  });
});
