import type { Queryable, Tx } from '../db/types.ts';
import type { StoredEvent } from '../core/event-store/types.ts';
import type { ProjectionDefinition } from '../core/projections/definition.ts';
import { ident } from '../core/sql-ident.ts';
import { newer, ORDER_SECTIONS, orderIdOf, sectionOf, type Section } from './order-summary.ts';

/**
 * The `customer_totals` async projection (API.md): per customer, the number of orders, their total
 * amount and the loyalty points earned, across order streams.
 *
 * Observations of an order arrive in any order (its LoyaltyPointsUpdated may come before the
 * OrderCreated that names the customer), so the projection keeps one row per order in
 * `<table>_orders` (the newest OrderCreated and the newest LoyaltyPointsUpdated by source time, as
 * in order_summary, plus the order's event count), and recomputes the totals of every customer a
 * batch touched from those rows. The result depends only on the set of events. A customer's
 * `eventsApplied` counts the events of its orders; events of an order whose customer is not known
 * yet are counted on the order and join the customer's count when OrderCreated arrives.
 */
export const customerTotals: ProjectionDefinition = {
  name: 'customer_totals',
  kind: 'async',
  eventTypes: Object.keys(ORDER_SECTIONS),
  tables: (table) => [table, `${table}_orders`],

  async createTable(tx: Tx, table: string) {
    await tx.query(
      `create table if not exists ${ident(table)} (
         customer_id          text primary key,
         orders               integer     not null,
         total_amount         numeric     not null,
         loyalty_points       numeric     not null,
         events_applied       integer     not null,
         last_global_position bigint      not null
       )`,
    );
    await tx.query(
      `create table if not exists ${ident(`${table}_orders`)} (
         order_id             text primary key,
         created              jsonb,
         loyalty              jsonb,
         customer_id          text,
         total_amount         numeric,
         points_earned        numeric,
         events               integer not null default 0,
         last_global_position bigint  not null default 0
       )`,
    );
    await tx.query(`create index if not exists ${ident(`${table}_orders_customer`)} on ${ident(`${table}_orders`)} (customer_id)`);
  },

  async apply(tx: Tx, table: string, events: readonly StoredEvent[]) {
    const orders = new Map<string, { orderId: string; created?: Section; loyalty?: Section; events: number; last: number }>();
    for (const event of events) {
      const orderId = orderIdOf(event.streamId);
      if (!orderId) continue;
      let o = orders.get(orderId);
      if (!o) orders.set(orderId, (o = { orderId, events: 0, last: 0 }));
      o.events += 1;
      o.last = Math.max(o.last, event.globalPosition);
      const section = sectionOf(event);
      if (section?.[0] === 'customer') o.created = newer(o.created, section[1]);
      if (section?.[0] === 'loyalty') o.loyalty = newer(o.loyalty, section[1]);
    }
    if (orders.size === 0) return;
    const t = ident(table);
    const ot = ident(`${table}_orders`);
    const newest = (col: string) => `case
        when excluded.${col} is null then cur.${col}
        when cur.${col} is null then excluded.${col}
        when excluded.${col}->>'order' collate "C" > cur.${col}->>'order' collate "C" then excluded.${col}
        else cur.${col} end`;
    const batch = JSON.stringify([...orders.values()]);
    const ids = JSON.stringify([...orders.keys()]);
    // The customers of the touched orders before this batch (an order can change customer when a
    // newer OrderCreated arrives) and after it: both need their totals recomputed.
    const before = await tx.query<{ customer_id: string }>(
      `select distinct customer_id from ${ot}
        where order_id in (select jsonb_array_elements_text($1::jsonb)) and customer_id is not null`,
      [ids],
    );
    const created = newest('created');
    const loyalty = newest('loyalty');
    const after = await tx.query<{ customer_id: string | null }>(
      `insert into ${ot} as cur (order_id, created, loyalty, customer_id, total_amount, points_earned, events, last_global_position)
       select d->>'orderId', d->'created', d->'loyalty',
              d->'created'->'data'->>'customerId', (d->'created'->'data'->>'totalAmount')::numeric,
              (d->'loyalty'->'data'->>'pointsEarned')::numeric, (d->>'events')::int, (d->>'last')::bigint
         from jsonb_array_elements($1::jsonb) as d
       on conflict (order_id) do update set
         created = ${created},
         loyalty = ${loyalty},
         customer_id = (${created})->'data'->>'customerId',
         total_amount = ((${created})->'data'->>'totalAmount')::numeric,
         points_earned = ((${loyalty})->'data'->>'pointsEarned')::numeric,
         events = cur.events + excluded.events,
         last_global_position = greatest(cur.last_global_position, excluded.last_global_position)
       returning customer_id`,
      [batch],
    );
    const customers = [...new Set([...before, ...after].map((r) => r.customer_id).filter((c): c is string => c !== null))];
    if (customers.length === 0) return;
    const list = JSON.stringify(customers);
    await tx.query(`delete from ${t} where customer_id in (select jsonb_array_elements_text($1::jsonb))`, [list]);
    await tx.query(
      `insert into ${t} (customer_id, orders, total_amount, loyalty_points, events_applied, last_global_position)
       select customer_id, count(*), coalesce(sum(total_amount), 0), coalesce(sum(points_earned), 0),
              sum(events), max(last_global_position)
         from ${ot}
        where customer_id in (select jsonb_array_elements_text($1::jsonb))
        group by customer_id`,
      [list],
    );
  },
};

export interface CustomerTotalsDocument {
  customerId: string;
  orders: number;
  totalAmount: number;
  loyaltyPoints: number;
  eventsApplied: number;
  lastGlobalPosition: number;
}

export async function readCustomerTotals(q: Queryable, table: string, customerId?: string): Promise<CustomerTotalsDocument[]> {
  const rows = await q.query<{
    customer_id: string;
    orders: number;
    total_amount: string;
    loyalty_points: string;
    events_applied: number;
    last_global_position: number;
  }>(
    `select * from ${ident(table)} where $1::text is null or customer_id = $1 order by customer_id`,
    [customerId ?? null],
  );
  return rows.map((r) => ({
    customerId: r.customer_id,
    orders: r.orders,
    totalAmount: Number(r.total_amount),
    loyaltyPoints: Number(r.loyalty_points),
    eventsApplied: r.events_applied,
    lastGlobalPosition: r.last_global_position,
  }));
}
