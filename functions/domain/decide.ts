import { createHash } from 'node:crypto';
import type { NewEvent, StoredEvent } from '../core/event-store/types.ts';
import { newer, sectionOf, type Section } from './order-summary.ts';

export type DecisionType = 'OrderConfirmed' | 'OrderRejected';
export type DecisionEventType = DecisionType | 'OrderDecisionWithdrawn';

/**
 * The write-side decision for an order, from the set of its observations (never their arrival
 * order): the newest payment by source time decides. Failed: rejected. Successful with inventory
 * reserved: confirmed. Otherwise nothing yet.
 */
export function desiredDecision(events: readonly StoredEvent[]): { type: DecisionType; payment: Section; inventory?: Section } | undefined {
  let payment: Section | undefined;
  let inventory: Section | undefined;
  for (const e of events) {
    const s = sectionOf(e);
    if (s?.[0] === 'payment') payment = newer(payment, s[1]);
    if (s?.[0] === 'inventory') inventory = newer(inventory, s[1]);
  }
  if (payment?.data.status === 'failed') return { type: 'OrderRejected', payment };
  if (payment?.data.status === 'successful' && inventory) return { type: 'OrderConfirmed', payment, inventory };
  return undefined;
}

/** The decision in force: the last decision event in the stream (none after a withdrawal). */
export function currentDecision(events: readonly StoredEvent[]): DecisionType | undefined {
  let current: DecisionType | undefined;
  for (const e of events) {
    if (e.type === 'OrderConfirmed' || e.type === 'OrderRejected') current = e.type;
    if (e.type === 'OrderDecisionWithdrawn') current = undefined;
  }
  return current;
}

/**
 * The decision event to append with an observation, if the decision changes: the first one, or a
 * correction when a newer observation reverses the outcome. Only the type is compared, so an order
 * with a single payment observation gets exactly one decision, whatever else arrives and in what
 * order; and since the newest payment decides, the final decision depends only on the set of
 * observations. Its id is derived from the observation's, so a redelivery computes the same event.
 */
export function decisionFor(orderId: string, observationId: string, before: readonly StoredEvent[], after: readonly StoredEvent[]): NewEvent | undefined {
  const desired = desiredDecision(after);
  const current = currentDecision(before);
  const id = derivedUuid(`${observationId}:decision`);
  const metadata = { causationId: observationId };
  if (!desired) {
    if (!current) return undefined;
    // The decision in force no longer follows from the observations (a newer payment succeeded
    // after a rejection, inventory not reserved yet): withdraw it, or the outcome would depend on
    // the order in which the payments arrived.
    return { id, type: 'OrderDecisionWithdrawn', data: { orderId, occurredAt: latestPaymentAt(after), withdrawn: current }, metadata };
  }
  if (desired.type === current) return undefined;
  const shipping = after.map(sectionOf).reduce<Section | undefined>((s, x) => (x?.[0] === 'shipping' ? newer(s, x[1]) : s), undefined);
  const occurredAt = desired.inventory && desired.inventory.at > desired.payment.at ? desired.inventory.at : desired.payment.at;
  const data =
    desired.type === 'OrderConfirmed'
      ? { orderId, occurredAt, warehouseId: desired.inventory!.data.warehouseId ?? null, estimatedDays: shipping?.data.estimatedDays ?? null }
      : { orderId, occurredAt, reason: 'payment failed' };
  return { id, type: desired.type, data, metadata };
}

function latestPaymentAt(events: readonly StoredEvent[]): string {
  let payment: Section | undefined;
  for (const e of events) {
    const s = sectionOf(e);
    if (s?.[0] === 'payment') payment = newer(payment, s[1]);
  }
  return payment?.at ?? new Date(0).toISOString();
}

/** A name-based UUID (SHA-256, version bits 8): the same name always gives the same id. */
export function derivedUuid(name: string): string {
  const h = createHash('sha256').update(name).digest('hex');
  const variant = ((parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}
