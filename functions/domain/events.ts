import { ValidationError, type FieldProblem } from '../core/errors.ts';
import { isPlainObject, isUuid } from '../core/event-store/validate.ts';
import type { JsonObject, NewEvent } from '../core/event-store/types.ts';
import { sourceTime } from './source-time.ts';

/**
 * The order-fulfilment domain events (API.md) and their validation at the edge. Observations come
 * from other services (HTTP or SQS); decisions are appended only by the system (decide.ts).
 */
export const OBSERVATION_TYPES = [
  'OrderCreated',
  'InventoryReserved',
  'PaymentProcessed',
  'ShippingCalculated',
  'LoyaltyPointsUpdated',
] as const;
export const DECISION_TYPES = ['OrderConfirmed', 'OrderRejected', 'OrderDecisionWithdrawn'] as const;
export type ObservationType = (typeof OBSERVATION_TYPES)[number];

export const ORDER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

type FieldRule = (value: unknown) => string | undefined;
const string: FieldRule = (v) => (typeof v === 'string' && v.length > 0 && v.length <= 200 ? undefined : 'must be a non-empty string (at most 200 characters)');
const amount: FieldRule = (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? undefined : 'must be a non-negative number');
const count: FieldRule = (v) => (Number.isSafeInteger(v) && (v as number) >= 0 ? undefined : 'must be a non-negative integer');
const currency: FieldRule = (v) => (typeof v === 'string' && /^[A-Z]{3}$/.test(v) ? undefined : 'must be a three-letter ISO 4217 code');
const oneOf =
  (...values: string[]): FieldRule =>
  (v) =>
    typeof v === 'string' && values.includes(v) ? undefined : `must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}`;
const items: FieldRule = (v) => {
  if (!Array.isArray(v) || v.length === 0 || v.length > 500) return 'must be a list of 1 to 500 items';
  for (const item of v) {
    if (!isPlainObject(item) || string(item.sku) || count(item.quantity) || amount(item.price)) {
      return 'every item needs sku (string), quantity (integer) and price (number)';
    }
  }
  return undefined;
};
const quantities: FieldRule = (v) =>
  isPlainObject(v) && Object.keys(v).length > 0 && Object.values(v).every((q) => count(q) === undefined)
    ? undefined
    : 'must map each sku to a non-negative integer quantity';

const SCHEMAS: Record<ObservationType, Record<string, FieldRule>> = {
  OrderCreated: { customerId: string, totalAmount: amount, currency, items },
  InventoryReserved: { reservedItems: quantities, warehouseId: string },
  PaymentProcessed: { transactionId: string, amount, status: oneOf('successful', 'failed'), method: string },
  ShippingCalculated: { shippingCost: amount, estimatedDays: count },
  LoyaltyPointsUpdated: { pointsEarned: count, totalPoints: count, tierStatus: string },
};

export interface Observation extends NewEvent {
  id: string;
  type: ObservationType;
  data: JsonObject & { orderId: string; occurredAt: string };
}

/**
 * Validates one observation `{ id, type, data }` for order `orderId` (the URL's or the message's):
 * every problem is reported at once, with its field. The id is required: it is the idempotency key
 * of at-least-once delivery.
 */
export function validateObservation(orderId: unknown, body: unknown): Observation {
  const problems: FieldProblem[] = [];
  if (typeof orderId !== 'string' || !ORDER_ID_PATTERN.test(orderId)) {
    problems.push({ path: 'orderId', message: 'must be 1-64 letters, digits, "_" or "-", starting with a letter or digit' });
  }
  if (!isPlainObject(body)) throw new ValidationError([...problems, { path: 'body', message: 'must be a JSON object' }]);
  for (const key of Object.keys(body)) {
    if (!['id', 'type', 'data'].includes(key)) problems.push({ path: key, message: 'is not a known field' });
  }
  if (!isUuid(body.id)) problems.push({ path: 'id', message: 'must be a UUID (the observation id, used for de-duplication)' });
  const type = body.type;
  if ((DECISION_TYPES as readonly unknown[]).includes(type)) {
    problems.push({ path: 'type', message: `${String(type)} is a decision; only the system appends decisions` });
  } else if (!(OBSERVATION_TYPES as readonly unknown[]).includes(type)) {
    problems.push({ path: 'type', message: `must be one of ${OBSERVATION_TYPES.join(', ')}` });
  }
  const data = body.data;
  if (!isPlainObject(data)) problems.push({ path: 'data', message: 'must be a JSON object' });
  else {
    if (data.orderId !== orderId) problems.push({ path: 'data.orderId', message: 'must equal the order id of the request' });
    // The source's own clock, comparable across services: exactly what the projections read.
    if (sourceTime(data.occurredAt) === undefined) {
      problems.push({ path: 'data.occurredAt', message: 'must be an ISO-8601 timestamp with seconds and a time zone, a date that exists, in the years 1000 to 9998' });
    }
    const schema = SCHEMAS[type as ObservationType];
    if (schema) {
      for (const [field, rule] of Object.entries(schema)) {
        const problem = rule(data[field]);
        if (problem) problems.push({ path: `data.${field}`, message: problem });
      }
    }
  }
  if (problems.length > 0) throw new ValidationError(problems);
  return { id: (body.id as string).toLowerCase(), type: type as ObservationType, data: data as Observation['data'] };
}
