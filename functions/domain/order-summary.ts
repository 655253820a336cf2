import type { Queryable, Tx } from '../db/types.ts';
import type { JsonObject, StoredEvent } from '../core/event-store/types.ts';
import type { ProjectionDefinition } from '../core/projections/definition.ts';
import { ident } from '../core/sql-ident.ts';

/**
 * The `order_summary` inline projection (API.md): one document per order stream `order-{orderId}`.
 *
 * Each observed section (customer, inventory, payment, shipping, loyalty) keeps the observation
 * with the newest source time `occurredAt`; ties go to the larger event id. The decision section
 * keeps the latest decision in the stream (a correction supersedes the one before it). Each merge is
 * a max over a total order, so the document depends only on the events, never on the order they are
 * applied in (inline, replay, drain, or a late-arriving observation). `eventsApplied` counts events
 * applied, so an event applied twice, or lost, shows up against the stream's length.
 */
export const ORDER_SECTIONS = {
  OrderCreated: 'customer',
  InventoryReserved: 'inventory',
  PaymentProcessed: 'payment',
  ShippingCalculated: 'shipping',
  LoyaltyPointsUpdated: 'loyalty',
  OrderConfirmed: 'decision',
  OrderRejected: 'decision',
  // A correction to "no decision": a newer payment succeeded after a rejection, inventory pending.
  OrderDecisionWithdrawn: 'decision',
} as const;

export type OrderEventType = keyof typeof ORDER_SECTIONS;
export type SectionName = (typeof ORDER_SECTIONS)[OrderEventType];
export const OBSERVED_SECTIONS = ['customer', 'inventory', 'payment', 'shipping', 'loyalty'] as const;

export interface Section {
  /** The source's own time, normalised to ISO-8601 UTC with milliseconds (sorts as text). */
  at: string;
  eventId: string;
  type: string;
  data: JsonObject;
  /**
   * What "newest" means, compared as text in byte order. Observations: source time, then event id.
   * Decisions: their stream position, because a decision is made on the write side against the
   * stream version, and a correction supersedes the decision before it in the stream whatever the
   * source times involved.
   */
  order: string;
}

export interface OrderSummaryRow {
  order_id: string;
  sections: Partial<Record<SectionName, Section>>;
  events_applied: number;
  last_global_position: number;
}

export function orderIdOf(streamId: string): string | undefined {
  return streamId.startsWith('order-') && streamId.length > 6 ? streamId.slice(6) : undefined;
}

export function sectionOf(event: StoredEvent): [SectionName, Section] | undefined {
  const name = ORDER_SECTIONS[event.type as OrderEventType];
  if (!name) return undefined;
  const { orderId: _orderId, occurredAt, ...data } = event.data;
  const at = normaliseTime(occurredAt) ?? normaliseTime(event.recordedAt) ?? '';
  const order = name === 'decision' ? `p${String(event.streamPosition).padStart(15, '0')}` : `${at}|${event.id}`;
  return [name, { at, eventId: event.id, type: event.type, data, order }];
}

/** The newer of two sections by their `order` key (byte order, as the SQL merge compares it). */
export function newer(a: Section | undefined, b: Section | undefined): Section | undefined {
  if (!a) return b;
  if (!b) return a;
  return a.order >= b.order ? a : b;
}

function normaliseTime(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? undefined : new Date(ms).toISOString();
}

/** The columns of a version's table (the bench's baselines create theirs with the same). */
export const ORDER_SUMMARY_COLUMNS = `
  order_id             text primary key,
  sections             jsonb       not null default '{}'::jsonb,
  events_applied       integer     not null default 0,
  last_global_position bigint      not null default 0,
  updated_at           timestamptz not null default now()`;

/**
 * The merge of a partial document into a row, for `on conflict (order_id) do update set …` with the
 * row as `cur` (the bench's baselines run the same). Only the incoming sections are looked at: each
 * replaces the stored one when there is none or it is newer (byte order, "C", as in JS, whatever the
 * database's collation; a tie keeps the stored one, as newer() does).
 */
export const ORDER_SUMMARY_MERGE = `
  sections = cur.sections || coalesce((
    select jsonb_object_agg(k, v)
      from jsonb_each(excluded.sections) as e(k, v)
     where cur.sections->k is null or v->>'order' collate "C" > cur.sections->k->>'order' collate "C"), '{}'::jsonb),
  events_applied = cur.events_applied + excluded.events_applied,
  last_global_position = greatest(cur.last_global_position, excluded.last_global_position),
  updated_at = now()`;

export const orderSummary: ProjectionDefinition = {
  name: 'order_summary',
  kind: 'inline',
  eventTypes: Object.keys(ORDER_SECTIONS),

  async createTable(tx: Tx, table: string) {
    await tx.query(
      `create table if not exists ${ident(table)} (${ORDER_SUMMARY_COLUMNS})`,
    );
  },

  /**
   * Set-based: the batch is folded per order in memory (an upsert cannot touch one row twice), then
   * one statement merges every order's partial document into its row, section by section.
   */
  async apply(tx: Tx, table: string, events: readonly StoredEvent[]) {
    const partials = new Map<string, { orderId: string; sections: Record<string, Section>; count: number; last: number }>();
    for (const event of events) {
      const orderId = orderIdOf(event.streamId);
      const section = sectionOf(event);
      if (!orderId || !section) continue;
      let p = partials.get(orderId);
      if (!p) partials.set(orderId, (p = { orderId, sections: {}, count: 0, last: 0 }));
      const [name, value] = section;
      p.sections[name] = newer(p.sections[name], value)!;
      p.count += 1;
      p.last = Math.max(p.last, event.globalPosition);
    }
    if (partials.size === 0) return;
    const t = ident(table);
    await tx.query(
      `insert into ${t} as cur (order_id, sections, events_applied, last_global_position)
       select d->>'orderId', d->'sections', (d->>'count')::int, (d->>'last')::bigint
         from jsonb_array_elements($1::jsonb) as d
       on conflict (order_id) do update set ${ORDER_SUMMARY_MERGE}`,
      [JSON.stringify([...partials.values()])],
    );
  },
};

export interface OrderSummaryDocument {
  orderId: string;
  status: 'pending' | 'confirmed' | 'rejected';
  customer: JsonObject | null;
  payment: JsonObject | null;
  inventory: JsonObject | null;
  shipping: JsonObject | null;
  loyalty: JsonObject | null;
  completeness: { received: string[]; missing: string[]; complete: boolean };
  decision: { type: string; at: string; data: JsonObject } | null;
  eventsApplied: number;
  lastGlobalPosition: number;
}

export function toOrderSummaryDocument(row: OrderSummaryRow): OrderSummaryDocument {
  const s = row.sections;
  const data = (name: SectionName) => (s[name] ? { ...s[name].data, occurredAt: s[name].at } : null);
  const received = OBSERVED_SECTIONS.filter((name) => s[name]);
  const decision = s.decision?.type === 'OrderDecisionWithdrawn' ? undefined : s.decision;
  return {
    orderId: row.order_id,
    status: decision?.type === 'OrderConfirmed' ? 'confirmed' : decision?.type === 'OrderRejected' ? 'rejected' : 'pending',
    customer: data('customer'),
    payment: data('payment'),
    inventory: data('inventory'),
    shipping: data('shipping'),
    loyalty: data('loyalty'),
    completeness: {
      received: [...received],
      missing: OBSERVED_SECTIONS.filter((name) => !s[name]),
      complete: received.length === OBSERVED_SECTIONS.length,
    },
    decision: decision ? { type: decision.type, at: decision.at, data: decision.data } : null,
    eventsApplied: row.events_applied,
    lastGlobalPosition: row.last_global_position,
  };
}

export async function readOrderSummaryRows(q: Queryable, table: string): Promise<OrderSummaryRow[]> {
  return q.query<OrderSummaryRow>(
    `select order_id, sections, events_applied, last_global_position from ${ident(table)} order by order_id`,
  );
}
