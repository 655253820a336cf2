import { randomUUID } from 'node:crypto';
import { expect } from 'vitest';
import type { Queryable } from '../../functions/db/types.ts';
import { EVENT_COLUMNS, toStoredEvent, type StoredEventRow } from '../../functions/core/event-store/read.ts';
import type { NewEvent, StoredEvent } from '../../functions/core/event-store/types.ts';
import {
  newer,
  orderIdOf,
  readOrderSummaryRows,
  sectionOf,
  type OrderSummaryRow,
} from '../../functions/domain/order-summary.ts';

export { prng } from './prng.ts';

const TYPES = [
  'OrderCreated',
  'InventoryReserved',
  'PaymentProcessed',
  'ShippingCalculated',
  'LoyaltyPointsUpdated',
  'OrderConfirmed',
  'OrderRejected',
] as const;

/** A random order-fulfilment event; `occurredAt` is random too, so arrival order differs from source order. */
export function randomOrderEvent(random: () => number, orderId: string): NewEvent {
  const type = TYPES[Math.floor(random() * TYPES.length)]!;
  const occurredAt = new Date(Date.UTC(2026, 0, 1) + Math.floor(random() * 86_400_000)).toISOString();
  const n = Math.floor(random() * 1000);
  const data: Record<string, unknown> = { orderId, occurredAt };
  switch (type) {
    case 'OrderCreated':
      Object.assign(data, { customerId: `c-${n % 7}`, totalAmount: n, currency: 'EUR', items: [{ sku: `s${n}`, quantity: 1, price: n }] });
      break;
    case 'InventoryReserved':
      Object.assign(data, { reservedItems: { [`s${n}`]: 1 }, warehouseId: `w${n % 3}` });
      break;
    case 'PaymentProcessed':
      Object.assign(data, { transactionId: `t${n}`, amount: n, status: n % 5 === 0 ? 'failed' : 'successful', method: 'card' });
      break;
    case 'ShippingCalculated':
      Object.assign(data, { shippingCost: n / 10, estimatedDays: n % 9 });
      break;
    case 'LoyaltyPointsUpdated':
      Object.assign(data, { pointsEarned: n % 50, totalPoints: n, tierStatus: 'silver' });
      break;
    case 'OrderConfirmed':
      Object.assign(data, { warehouseId: `w${n % 3}`, estimatedDays: n % 9 });
      break;
    case 'OrderRejected':
      Object.assign(data, { reason: 'payment failed' });
      break;
  }
  return { id: randomUUID(), type, data };
}

export async function committedEvents(q: Queryable): Promise<StoredEvent[]> {
  const rows = await q.query<StoredEventRow>(`select ${EVENT_COLUMNS} from events order by global_position`);
  return rows.map(toStoredEvent);
}

/** The read model computed from scratch, in JS, from the committed events: the oracle. */
export function foldOrderSummaries(events: readonly StoredEvent[]): OrderSummaryRow[] {
  const rows = new Map<string, OrderSummaryRow>();
  for (const event of events) {
    const orderId = orderIdOf(event.streamId);
    const section = sectionOf(event);
    if (!orderId || !section) continue;
    let row = rows.get(orderId);
    if (!row) rows.set(orderId, (row = { order_id: orderId, sections: {}, events_applied: 0, last_global_position: 0 }));
    row.sections[section[0]] = newer(row.sections[section[0]], section[1])!;
    row.events_applied += 1;
    row.last_global_position = Math.max(row.last_global_position, event.globalPosition);
  }
  return [...rows.values()].sort((a, b) => (a.order_id < b.order_id ? -1 : a.order_id > b.order_id ? 1 : 0));
}

export interface ReadModelDiff {
  missing: string[];
  extra: string[];
  /** Orders whose document differs, with the applied count seen and expected. */
  wrong: Array<{ orderId: string; eventsApplied: number; expected: number }>;
}

export async function diffOrderSummary(q: Queryable, table: string): Promise<ReadModelDiff> {
  const expected = foldOrderSummaries(await committedEvents(q));
  const actual = await readOrderSummaryRows(q, table);
  const byId = new Map(actual.map((r) => [r.order_id, r]));
  const diff: ReadModelDiff = { missing: [], extra: [], wrong: [] };
  for (const e of expected) {
    const a = byId.get(e.order_id);
    byId.delete(e.order_id);
    if (!a) diff.missing.push(e.order_id);
    else if (JSON.stringify(normalise(a)) !== JSON.stringify(normalise(e))) {
      diff.wrong.push({ orderId: e.order_id, eventsApplied: a.events_applied, expected: e.events_applied });
    }
  }
  diff.extra = [...byId.keys()];
  return diff;
}

function normalise(row: OrderSummaryRow): unknown {
  const sections = Object.fromEntries(Object.entries(row.sections).sort(([a], [b]) => (a < b ? -1 : 1)));
  return { ...row, sections: JSON.parse(JSON.stringify(sections, (_k, v: unknown) => sortKeys(v))) as unknown };
}

function sortKeys(v: unknown): unknown {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)));
  }
  return v;
}

export async function expectReadModelMatchesLog(q: Queryable, table: string): Promise<void> {
  const diff = await diffOrderSummary(q, table);
  expect(diff).toEqual({ missing: [], extra: [], wrong: [] });
}
