import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureProjection, resolveReadTarget } from '../../functions/core/projections/ensure.ts';
import { runRebuild } from '../../functions/core/rebuild/index.ts';
import type { Db } from '../../functions/db/types.ts';
import { derivedUuid } from '../../functions/domain/decide.ts';
import { handleObservation } from '../../functions/domain/observe.ts';
import { orderSummary, toOrderSummaryDocument, type OrderSummaryRow } from '../../functions/domain/order-summary.ts';
import { expectReadModelMatchesLog } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
let db: Db;
const projections = [orderSummary];

beforeAll(async () => {
  t = await createTestDatabase();
  db = t.db;
  await ensureProjection(db, orderSummary);
});
afterAll(async () => t?.drop());

/** An observation without its order: instantiated per order, so one set can be delivered to two orders. */
interface Template {
  type: string;
  at: number;
  fields: Record<string, unknown>;
}

const minute = fc.integer({ min: 0, max: 20 });
const template: fc.Arbitrary<Template> = fc.oneof(
  fc.record({ type: fc.constant('OrderCreated'), at: minute, fields: fc.record({ customerId: fc.constantFrom('c1', 'c2'), totalAmount: fc.integer({ min: 0, max: 500 }), currency: fc.constant('EUR'), items: fc.constant([{ sku: 'a', quantity: 1, price: 5 }]) }) }),
  fc.record({ type: fc.constant('InventoryReserved'), at: minute, fields: fc.record({ reservedItems: fc.constant({ a: 1 }), warehouseId: fc.constantFrom('w1', 'w2') }) }),
  fc.record({ type: fc.constant('PaymentProcessed'), at: minute, fields: fc.record({ transactionId: fc.constantFrom('t1', 't2'), amount: fc.integer({ min: 0, max: 500 }), status: fc.constantFrom('successful', 'failed'), method: fc.constant('card') }) }),
  fc.record({ type: fc.constant('ShippingCalculated'), at: minute, fields: fc.record({ shippingCost: fc.integer({ min: 0, max: 50 }), estimatedDays: fc.integer({ min: 1, max: 9 }) }) }),
  fc.record({ type: fc.constant('LoyaltyPointsUpdated'), at: minute, fields: fc.record({ pointsEarned: fc.integer({ min: 0, max: 50 }), totalPoints: fc.integer({ min: 0, max: 999 }), tierStatus: fc.constantFrom('silver', 'gold') }) }),
);

/** A set of observations and two deliveries of it: each a permutation, with some observations delivered twice. */
const scenario = fc.array(template, { minLength: 1, maxLength: 8 }).chain((set) => {
  const delivery = fc
    .array(fc.nat({ max: set.length - 1 }), { maxLength: 3 })
    .chain((dups) => {
      const all = [...set.keys(), ...dups];
      return fc.shuffledSubarray(all, { minLength: all.length, maxLength: all.length });
    });
  return fc.tuple(fc.constant(set), delivery, delivery);
});

let orderNo = 0;
/**
 * Ids ordered by template index within every order, so that two orders receiving the same set break
 * ties on source time the same way (in production a redelivered observation keeps its id).
 */
function idOf(orderId: string, index: number): string {
  const order = derivedUuid(orderId).slice(0, 8);
  return `${order}-0000-4000-8000-${index.toString(16).padStart(12, '0')}`;
}

function body(orderId: string, index: number, t: Template) {
  return {
    id: idOf(orderId, index),
    type: t.type,
    data: { orderId, occurredAt: new Date(Date.UTC(2026, 5, 1, 12, t.at)).toISOString(), ...t.fields },
  };
}

async function deliver(set: Template[], order: number[]): Promise<string> {
  const orderId = `prop-${orderNo++}`;
  for (const i of order) await handleObservation(db, orderId, body(orderId, i, set[i]!), { projections });
  return orderId;
}

async function summary(orderId: string) {
  const table = (await resolveReadTarget(db, 'order_summary'))!.table;
  const [row] = await db.query<OrderSummaryRow>(`select order_id, sections, events_applied, last_global_position from ${table} where order_id = $1`, [orderId]);
  const { orderId: _id, eventsApplied: _n, lastGlobalPosition: _p, decision, ...rest } = toOrderSummaryDocument(row!);
  return { ...rest, decision: decision?.type ?? null };
}

async function decisions(orderId: string): Promise<number> {
  const [row] = await db.query<{ n: number }>(
    "select count(*)::int as n from events where stream_id = $1 and type in ('OrderConfirmed', 'OrderRejected', 'OrderDecisionWithdrawn')",
    [`order-${orderId}`],
  );
  return row!.n;
}

describe('observations that arrive late, twice or out of order', () => {
  it('give the same order summary, decision included, whatever the arrival order and duplication', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ([set, first, second]) => {
        const a = await deliver(set, first);
        const b = await deliver(set, second);
        expect(await summary(a)).toEqual(await summary(b));
        // One observation per id in the stream, duplicates or not.
        const [row] = await db.query<{ n: number }>("select count(*)::int as n from events where stream_id = $1 and type not in ('OrderConfirmed', 'OrderRejected', 'OrderDecisionWithdrawn')", [`order-${a}`]);
        expect(row!.n).toBe(set.length);
        const payments = set.filter((x) => x.type === 'PaymentProcessed');
        if (payments.length === 1) {
          const decides = payments[0]!.fields.status === 'failed' || set.some((x) => x.type === 'InventoryReserved');
          expect(await decisions(a)).toBe(decides ? 1 : 0);
          expect(await decisions(b)).toBe(decides ? 1 : 0);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('a rebuild reads decisions from the log and never makes one', async () => {
    const [{ n: before } = { n: -1 }] = await db.query<{ n: number }>("select count(*)::int as n from events where type in ('OrderConfirmed', 'OrderRejected', 'OrderDecisionWithdrawn')");
    expect(before).toBeGreaterThan(0);
    await runRebuild(db, orderSummary, { owner: 'prop', mode: 'blue-green' });
    const [{ n: after } = { n: -2 }] = await db.query<{ n: number }>("select count(*)::int as n from events where type in ('OrderConfirmed', 'OrderRejected', 'OrderDecisionWithdrawn')");
    expect(after).toBe(before);
    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  });

  it('rejects invalid observations with their fields, and writes nothing', async () => {
    const [{ n: before } = { n: -1 }] = await db.query<{ n: number }>('select count(*)::int as n from events');
    const ok = body('bad-1', 0, { type: 'PaymentProcessed', at: 1, fields: { transactionId: 't', amount: 1, status: 'successful', method: 'card' } });
    const cases: Array<[string, unknown, unknown, string]> = [
      ['an order id with a slash', 'a/b', ok, 'orderId'],
      ['a missing id', 'bad-1', { ...ok, id: undefined }, 'id'],
      ['an unknown type', 'bad-1', { ...ok, type: 'Nope' }, 'type'],
      ['a decision sent as an observation', 'bad-1', { ...ok, type: 'OrderConfirmed' }, 'type'],
      ['data for another order', 'bad-1', { ...ok, data: { ...ok.data, orderId: 'other' } }, 'data.orderId'],
      ['a time without a zone', 'bad-1', { ...ok, data: { ...ok.data, occurredAt: '2026-01-01T00:00:00' } }, 'data.occurredAt'],
      ['a wrong payment status', 'bad-1', { ...ok, data: { ...ok.data, status: 'maybe' } }, 'data.status'],
      ['a negative amount', 'bad-1', { ...ok, data: { ...ok.data, amount: -1 } }, 'data.amount'],
      ['a body that is not an object', 'bad-1', [ok], 'body'],
    ];
    for (const [, orderId, b, path] of cases) {
      const error = await handleObservation(db, orderId as string, b).then(() => undefined, (e: unknown) => e);
      expect(error).toMatchObject({ code: 'VALIDATION_FAILED' });
      expect((error as { problems: Array<{ path: string }> }).problems.map((p) => p.path)).toContain(path);
    }
    const [{ n: after } = { n: -2 }] = await db.query<{ n: number }>('select count(*)::int as n from events');
    expect(after).toBe(before);
  });

  it('decides once when two observations of one order arrive at the same time', async () => {
    for (let round = 0; round < 10; round++) {
      const orderId = `race-${round}`;
      const payment = body(orderId, 0, { type: 'PaymentProcessed', at: 1, fields: { transactionId: 't', amount: 1, status: 'successful', method: 'card' } });
      const inventory = body(orderId, 1, { type: 'InventoryReserved', at: 2, fields: { reservedItems: { a: 1 }, warehouseId: 'w1' } });
      const results = await Promise.all([
        handleObservation(db, orderId, payment, { projections }),
        handleObservation(db, orderId, inventory, { projections }),
        handleObservation(db, orderId, payment, { projections }),
      ]);
      expect(results.filter((r) => r.decision && !r.duplicate)).toHaveLength(1);
      expect(await decisions(orderId)).toBe(1);
    }
  });
});
