import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalStack, type LocalStack } from '../support/local-stack.ts';
import { prng, randomOrderEvent } from '../support/orders.ts';

/**
 * The local stack as a user runs it: `npm start` in a child process (embedded PostgreSQL in a fresh
 * folder, the API, the state machine runner, the projector, the SQS poller), then plain HTTP.
 */
let stack: LocalStack;
let base: string;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  stack = await startLocalStack();
  base = stack.api;
}, 90_000);

afterAll(async () => {
  const clean = await stack?.stop();
  if (!clean) console.log(stack?.output().slice(-1500));
  expect(clean).toBe(true);
}, 40_000);

async function http(method: string, path: string, body?: unknown, raw?: string) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    ...(raw !== undefined ? { body: raw } : body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, body: (await res.json()) as any };
}

describe('the local stack over HTTP', () => {
  it('keeps every order summary equal to its stream while clients append through a blue-green and an in-place rebuild', async () => {
    const orders = Array.from({ length: 60 }, (_, i) => `e2e-${i}`);
    let running = true;
    let appended = 0;
    const clients = Array.from({ length: 8 }, async (_, n) => {
      const random = prng(900 + n);
      while (running) {
        const orderId = orders[Math.floor(random() * orders.length)]!;
        const e = randomOrderEvent(random, orderId);
        const res =
          e.type === 'OrderConfirmed' || e.type === 'OrderRejected'
            ? await http('POST', `/streams/order-${orderId}/events`, { events: [{ type: 'ShippingCalculated', data: { orderId, occurredAt: e.data.occurredAt, shippingCost: 1, estimatedDays: 1 } }] })
            : await http('POST', `/orders/${orderId}/observations`, e);
        expect([200, 201]).toContain(res.status);
        appended += 1;
      }
    });
    try {
      await sleep(500);
      for (const mode of ['blue-green', 'in-place']) {
        const started = await http('POST', '/projections/order_summary/rebuilds', { mode });
        expect(started).toMatchObject({ status: 202, body: { projection: 'order_summary', mode } });
        let phase = '';
        for (let i = 0; i < 240 && phase !== 'done'; i++) {
          const status = await http('GET', `/projections/order_summary/rebuilds/${started.body.rebuildId}`);
          expect(status.status).toBe(200);
          phase = status.body.phase;
          expect(phase).not.toBe('failed');
          await sleep(250);
        }
        expect(phase).toBe('done');
      }
      await sleep(300);
    } finally {
      running = false;
      await Promise.all(clients);
    }
    expect(appended).toBeGreaterThan(100);
    for (const orderId of orders) {
      const stream = await http('GET', `/streams/order-${orderId}?limit=1000`);
      if (stream.status === 404) continue;
      const summary = await http('GET', `/orders/${orderId}`);
      expect(summary.status).toBe(200);
      expect({ orderId, eventsApplied: summary.body.eventsApplied, last: summary.body.lastGlobalPosition }).toEqual({
        orderId,
        eventsApplied: stream.body.events.length,
        last: Math.max(...stream.body.events.map((e: { globalPosition: number }) => e.globalPosition)),
      });
    }
    const projections = await http('GET', '/projections');
    expect(projections.body.find((p: { name: string }) => p.name === 'order_summary')).toMatchObject({ state: 'live', skipsPending: 0, rebuild: null });
  }, 120_000);

  it('answers every error code over HTTP and writes nothing', async () => {
    await http('POST', '/streams/e2e-existing/events', { events: [{ id: '6f1c2b9e-8a4d-4c3e-9b7a-2d5e8f1a3c4b', type: 'A', data: {} }] });
    const watched = ['s1', 'e2e-existing', 'other-stream', '%00', '..'];
    const snapshot = async () => Promise.all(watched.map(async (s) => JSON.stringify((await http('GET', `/streams/${encodeURIComponent(s)}`)).body)));
    const before = await snapshot();
    const cases: Array<[string, string, string | undefined, number, string]> = [
      ['POST', '/streams/s1/events', '{"events": [', 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s1/events', JSON.stringify({ events: [{ type: 5, data: [] }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s1/events', JSON.stringify({ expectedVersion: '1', events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s1/events', JSON.stringify({ events: [{ type: 'A', data: { s: 'x'.repeat(2_000_000) } }] }), 413, 'PAYLOAD_TOO_LARGE'],
      ['POST', '/streams/%00/events', JSON.stringify({ events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/..%2F..%2Fetc%2Fpasswd/events', JSON.stringify({ events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      // The URL parser folds %2E%2E into "..", so this one never reaches a stream route.
      ['POST', '/streams/%2E%2E/events', JSON.stringify({ events: [{ type: 'A', data: {} }] }), 404, 'ROUTE_NOT_FOUND'],
      ['POST', '/streams/e2e-existing/events', JSON.stringify({ expectedVersion: 0, events: [{ type: 'A', data: {} }] }), 409, 'WRONG_EXPECTED_VERSION'],
      ['POST', '/streams/other-stream/events', JSON.stringify({ events: [{ id: '6f1c2b9e-8a4d-4c3e-9b7a-2d5e8f1a3c4b', type: 'A', data: {} }] }), 409, 'DUPLICATE_EVENT_ID'],
      ['GET', '/no/such/route/here', undefined, 404, 'ROUTE_NOT_FOUND'],
      ['PATCH', '/projections', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['GET', '/streams/never-seen', undefined, 404, 'STREAM_NOT_FOUND'],
      ['POST', '/projections/unknown/rebuilds', '{}', 404, 'PROJECTION_NOT_FOUND'],
    ];
    for (const [method, path, raw, status, code] of cases) {
      const res = await http(method, path, undefined, raw);
      expect({ path: path.slice(0, 40), status: res.status, code: res.body.error?.code ?? '' }).toEqual({ path: path.slice(0, 40), status, code });
    }
    expect(await snapshot()).toEqual(before);
    const first = await http('POST', '/projections/customer_totals/rebuilds', { mode: 'blue-green' });
    const second = await http('POST', '/projections/customer_totals/rebuilds', { mode: 'blue-green' });
    expect(first.status).toBe(202);
    expect(second).toMatchObject({ status: 409, body: { error: { code: 'REBUILD_IN_PROGRESS' } } });
  });
});
