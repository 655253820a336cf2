import type { StoredEvent } from '../../functions/core/event-store/types.ts';
import { newer, orderIdOf, sectionOf, type Section } from '../../functions/domain/order-summary.ts';
import type { CustomerTotalsDocument } from '../../functions/domain/customer-totals.ts';

/** customer_totals computed from scratch, in JS, from the committed events: the oracle. */
export function foldCustomerTotals(events: readonly StoredEvent[]): CustomerTotalsDocument[] {
  const orders = new Map<string, { created?: Section; loyalty?: Section; events: number; last: number }>();
  for (const e of events) {
    const orderId = orderIdOf(e.streamId);
    const section = sectionOf(e);
    if (!orderId || !section) continue;
    const o = orders.get(orderId) ?? { events: 0, last: 0 };
    orders.set(orderId, o);
    o.events += 1;
    o.last = Math.max(o.last, e.globalPosition);
    if (section[0] === 'customer') o.created = newer(o.created, section[1]);
    if (section[0] === 'loyalty') o.loyalty = newer(o.loyalty, section[1]);
  }
  const customers = new Map<string, CustomerTotalsDocument>();
  for (const o of orders.values()) {
    const customerId = o.created?.data.customerId as string | undefined;
    if (!customerId) continue;
    const c = customers.get(customerId) ?? { customerId, orders: 0, totalAmount: 0, loyaltyPoints: 0, eventsApplied: 0, lastGlobalPosition: 0 };
    customers.set(customerId, c);
    c.orders += 1;
    c.totalAmount += Number(o.created!.data.totalAmount ?? 0);
    c.loyaltyPoints += Number(o.loyalty?.data.pointsEarned ?? 0);
    c.eventsApplied += o.events;
    c.lastGlobalPosition = Math.max(c.lastGlobalPosition, o.last);
  }
  return [...customers.values()].sort((a, b) => (a.customerId < b.customerId ? -1 : 1));
}
