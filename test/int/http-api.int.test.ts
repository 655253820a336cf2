import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureProjection } from '../../functions/core/projections/ensure.ts';
import { runProjector } from '../../functions/core/async/projector.ts';
import type { Db } from '../../functions/db/types.ts';
import { customerTotals } from '../../functions/domain/customer-totals.ts';
import { PROJECTIONS } from '../../functions/domain/projections.ts';
import { createApi } from '../../functions/http/api.ts';
import { inProcessRebuilds } from '../../functions/local/background-rebuilds.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
let db: Db;
let api: ReturnType<typeof createApi>;
let rebuilds: ReturnType<typeof inProcessRebuilds>;
const errors: unknown[] = [];
const log = { info: () => {}, warn: () => {}, error: (_m: string, extra?: Record<string, unknown>) => errors.push(extra) };

beforeAll(async () => {
  t = await createTestDatabase();
  db = t.db;
  for (const p of PROJECTIONS) await ensureProjection(db, p);
  rebuilds = inProcessRebuilds(db, log);
  api = createApi({ db, rebuilds, log });
});
afterAll(async () => {
  await rebuilds?.idle();
  await t?.drop();
});

async function call(method: string, path: string, body?: unknown, raw?: string) {
  const [pathname, search] = path.split('?') as [string, string | undefined];
  const res = await api({
    httpMethod: method,
    path: pathname,
    queryStringParameters: search ? Object.fromEntries(new URLSearchParams(search)) : null,
    headers: { 'x-correlation-id': 'test-corr' },
    body: raw ?? (body === undefined ? null : JSON.stringify(body)),
  });
  return { status: res.statusCode, body: JSON.parse(res.body) as Record<string, any>, headers: res.headers };
}

async function tables() {
  return {
    events: await db.query('select * from events order by global_position'),
    streams: await db.query('select * from streams order by stream_id'),
  };
}

const observation = (orderId: string, type: string, data: Record<string, unknown>) => ({
  id: randomUUID(),
  type,
  data: { orderId, occurredAt: '2026-03-01T10:00:00Z', ...data },
});

describe('the HTTP API', () => {
  it('appends, reads a stream back, and answers a retry with 200 and the original result', async () => {
    const id = randomUUID();
    const first = await call('POST', '/streams/cart-1/events', { expectedVersion: 0, events: [{ id, type: 'ItemAdded', data: { sku: 'a' } }] });
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({ streamId: 'cart-1', streamVersion: 1 });
    expect(first.headers['x-correlation-id']).toBe('test-corr');
    const retry = await call('POST', '/streams/cart-1/events', { expectedVersion: 0, events: [{ id, type: 'ItemAdded', data: { sku: 'a' } }] });
    expect(retry).toMatchObject({ status: 200, body: first.body });
    const read = await call('GET', '/streams/cart-1?fromVersion=1&limit=10');
    expect(read.status).toBe(200);
    expect(read.body.events[0]).toMatchObject({ id, type: 'ItemAdded', data: { sku: 'a' }, streamPosition: 1 });
    expect(read.body.events[0].metadata.correlationId).toBe('test-corr');
  });

  it('takes observations, decides, and serves the order summary and customer totals', async () => {
    expect((await call('POST', '/orders/o-1/observations', observation('o-1', 'OrderCreated', { customerId: 'cu-1', totalAmount: 30, currency: 'EUR', items: [{ sku: 'a', quantity: 1, price: 30 }] }))).status).toBe(201);
    expect((await call('POST', '/orders/o-1/observations', observation('o-1', 'InventoryReserved', { reservedItems: { a: 1 }, warehouseId: 'w1' }))).status).toBe(201);
    const paid = observation('o-1', 'PaymentProcessed', { transactionId: 't', amount: 30, status: 'successful', method: 'card' });
    const decided = await call('POST', '/orders/o-1/observations', paid);
    expect(decided).toMatchObject({ status: 201, body: { decision: 'OrderConfirmed' } });
    expect(await call('POST', '/orders/o-1/observations', paid)).toMatchObject({ status: 200, body: decided.body });
    const order = await call('GET', '/orders/o-1');
    expect(order).toMatchObject({ status: 200, body: { orderId: 'o-1', status: 'confirmed', eventsApplied: 4 } });
    expect(order.body.completeness.missing).toEqual(['shipping', 'loyalty']);
    await runProjector(db, customerTotals, { owner: 'test' });
    expect(await call('GET', '/customers/cu-1')).toMatchObject({ status: 200, body: { customerId: 'cu-1', orders: 1, totalAmount: 30 } });
  });

  it('starts a rebuild (202), refuses a second (409), and reports its progress until done', async () => {
    // A rebuild held by another worker (its lease unexpired): a second request is refused at once.
    const { acquireRebuild } = await import('../../functions/core/rebuild/acquire.ts');
    const { orderSummary } = await import('../../functions/domain/order-summary.ts');
    const { lease } = await acquireRebuild(db, orderSummary, { owner: 'elsewhere', mode: 'blue-green' });
    const refused = await call('POST', '/projections/order_summary/rebuilds', {});
    expect(refused).toMatchObject({ status: 409, body: { error: { code: 'REBUILD_IN_PROGRESS', details: { rebuildId: lease.rebuildId } } } });
    expect((await call('DELETE', `/projections/order_summary/rebuilds/${lease.rebuildId}`)).status).toBe(200);

    const started = await call('POST', '/projections/order_summary/rebuilds', { mode: 'in-place' });
    expect(started).toMatchObject({ status: 202, body: { projection: 'order_summary', mode: 'in-place' } });
    await rebuilds.idle();
    const progress = await call('GET', `/projections/order_summary/rebuilds/${started.body.rebuildId}`);
    expect(progress).toMatchObject({ status: 200, body: { phase: 'done', rebuildId: started.body.rebuildId } });
    const list = await call('GET', '/projections');
    expect(list.body.map((p: { name: string }) => p.name)).toEqual(['customer_totals', 'order_summary']);
  });

  it('resumes exactly the named rebuild, and refuses (never starts another) once it has ended', async () => {
    const { acquireRebuild } = await import('../../functions/core/rebuild/acquire.ts');
    const { orderSummary } = await import('../../functions/domain/order-summary.ts');
    // A worker that crashed: its lease runs out at once.
    const { lease } = await acquireRebuild(db, orderSummary, { owner: 'crashed', mode: 'blue-green', leaseMs: 1 });
    await new Promise((r) => setTimeout(r, 20));
    const resumed = await call('POST', '/projections/order_summary/rebuilds', { resume: lease.rebuildId });
    expect(resumed).toMatchObject({ status: 202, body: { rebuildId: lease.rebuildId, mode: 'blue-green' } });
    await rebuilds.idle();
    expect((await call('GET', `/projections/order_summary/rebuilds/${lease.rebuildId}`)).body.phase).toBe('done');

    // A late or repeated resume (a redriven failure message, say) finds it ended: 409, and nothing starts.
    const late = await call('POST', '/projections/order_summary/rebuilds', { resume: lease.rebuildId });
    expect(late).toMatchObject({ status: 409, body: { error: { code: 'REBUILD_NOT_RESUMABLE', details: { rebuildId: lease.rebuildId, phase: 'done' } } } });
    const list = await call('GET', '/projections');
    expect(list.body.find((p: { name: string }) => p.name === 'order_summary').rebuild).toBeNull();

    expect(await call('POST', '/projections/order_summary/rebuilds', { resume: randomUUID() })).toMatchObject({ status: 404, body: { error: { code: 'REBUILD_NOT_FOUND' } } });
    expect(await call('POST', '/projections/order_summary/rebuilds', { resume: 'yesterday' })).toMatchObject({ status: 400, body: { error: { code: 'VALIDATION_FAILED' } } });
  });

  it('cancels an abandoned rebuild through DELETE, leaving the live version serving', async () => {
    const { acquireRebuild } = await import('../../functions/core/rebuild/acquire.ts');
    const { orderSummary } = await import('../../functions/domain/order-summary.ts');
    const { lease } = await acquireRebuild(db, orderSummary, { owner: 'abandoned', mode: 'blue-green' });
    const cancelled = await call('DELETE', `/projections/order_summary/rebuilds/${lease.rebuildId}`);
    expect(cancelled).toMatchObject({ status: 200, body: { rebuildId: lease.rebuildId, phase: 'failed', error: 'cancelled' } });
    expect((await call('GET', `/projections/order_summary/rebuilds/${lease.rebuildId}`)).body.phase).toBe('failed');
    expect((await call('GET', '/orders/o-1')).status).toBe(200);
  });

  it('answers every error with its code and status, and writes nothing', async () => {
    await call('POST', '/streams/exists/events', { events: [{ type: 'A', data: {} }] });
    const before = await tables();
    const cases: Array<[string, string, string | undefined, number, string]> = [
      ['POST', '/streams/s/events', '{"events": [', 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s/events', '[]', 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s/events', JSON.stringify({ events: 'nope' }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s/events', JSON.stringify({ expectedVersion: 'three', events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s/events', JSON.stringify({ events: [{ type: 'A', data: {} }], extra: 1 }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/s/events', JSON.stringify({ events: [{ type: 'A', data: { s: 'x'.repeat(1_200_000) } }] }), 413, 'PAYLOAD_TOO_LARGE'],
      ['POST', '/streams/s/events', JSON.stringify({ events: [{ type: 'A', data: { s: 'x'.repeat(70_000) } }] }), 413, 'PAYLOAD_TOO_LARGE'],
      ['POST', '/streams/exists/events', JSON.stringify({ expectedVersion: 0, events: [{ type: 'A', data: {} }] }), 409, 'WRONG_EXPECTED_VERSION'],
      // A stream that does not exist, expected elsewhere: refused by the append's own call, which is
      // its own transaction, so the stream row it made to lock must not outlive the refusal.
      ['POST', '/streams/never-made/events', JSON.stringify({ expectedVersion: 3, events: [{ type: 'A', data: {} }] }), 409, 'WRONG_EXPECTED_VERSION'],
      ['POST', '/streams/never-made/events', JSON.stringify({ expectedVersion: 3, events: [{ id: randomUUID(), type: 'A', data: {} }] }), 409, 'WRONG_EXPECTED_VERSION'],
      ['POST', '/streams/bad%00id/events', JSON.stringify({ events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['POST', `/streams/${'x'.repeat(300)}/events`, JSON.stringify({ events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/%E0%A4%A/events', JSON.stringify({ events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/%20padded%20/events', JSON.stringify({ events: [{ type: 'A', data: {} }] }), 400, 'VALIDATION_FAILED'],
      ['GET', '/streams/never-written', undefined, 404, 'STREAM_NOT_FOUND'],
      ['GET', '/streams/exists?limit=-1', undefined, 400, 'VALIDATION_FAILED'],
      ['GET', '/streams/exists?limit=5000', undefined, 400, 'VALIDATION_FAILED'],
      ['GET', '/nowhere', undefined, 404, 'ROUTE_NOT_FOUND'],
      ['GET', '/streams/a/b/c/d', undefined, 404, 'ROUTE_NOT_FOUND'],
      ['DELETE', '/streams/exists', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['PUT', '/streams/exists/events', '{}', 405, 'METHOD_NOT_ALLOWED'],
      ['POST', '/orders/o-9/observations', JSON.stringify({ id: 'x', type: 'Nope', data: {} }), 400, 'VALIDATION_FAILED'],
      ['POST', '/streams/order-o-1/events', JSON.stringify({ events: [{ type: 'OrderConfirmed', data: { orderId: 'o-1' } }] }), 400, 'VALIDATION_FAILED'],
      ['POST', '/orders/..%2F..%2Fetc/observations', JSON.stringify({}), 400, 'VALIDATION_FAILED'],
      ['GET', '/orders/o-unknown', undefined, 404, 'ORDER_NOT_FOUND'],
      ['GET', '/orders/bad%2Fid', undefined, 400, 'VALIDATION_FAILED'],
      ['GET', '/customers/nobody', undefined, 404, 'CUSTOMER_NOT_FOUND'],
      ['POST', '/projections/nope/rebuilds', '{}', 404, 'PROJECTION_NOT_FOUND'],
      ['POST', '/projections/order_summary/rebuilds', JSON.stringify({ mode: 'sideways' }), 400, 'VALIDATION_FAILED'],
      ['GET', '/projections/order_summary/rebuilds/not-a-uuid', undefined, 400, 'VALIDATION_FAILED'],
      ['GET', `/projections/order_summary/rebuilds/${randomUUID()}`, undefined, 404, 'REBUILD_NOT_FOUND'],
    ];
    for (const [method, path, raw, status, code] of cases) {
      const res = await api({ httpMethod: method, path, body: raw ?? null, ...(path.includes('?') ? { path: path.split('?')[0]!, queryStringParameters: Object.fromEntries(new URLSearchParams(path.split('?')[1])) } : {}) });
      const body = JSON.parse(res.body) as { error: { code: string; message: string } };
      expect({ method, path: path.slice(0, 60), status: res.statusCode, code: body.error?.code }).toEqual({ method, path: path.slice(0, 60), status, code });
      expect(typeof body.error.message).toBe('string');
    }
    expect(await tables()).toEqual(before);
    const id = randomUUID();
    await call('POST', '/streams/dup-a/events', { events: [{ id, type: 'A', data: {} }] });
    const dupBefore = await tables();
    expect(await call('POST', '/streams/dup-b/events', { events: [{ id, type: 'A', data: {} }] })).toMatchObject({ status: 409, body: { error: { code: 'DUPLICATE_EVENT_ID' } } });
    expect(await tables()).toEqual(dupBefore);
    expect(before.events.length).toBe(dupBefore.events.length - 1);
    expect(errors).toEqual([]);
  });

  it('hides internals behind a 500 with a correlation id', async () => {
    const broken = createApi({ db: { ...db, query: () => Promise.reject(new Error('secret detail')) }, rebuilds, log });
    const res = await broken({ httpMethod: 'GET', path: '/projections', headers: {} });
    expect(res.statusCode).toBe(500);
    expect(res.body).not.toContain('secret');
    expect(JSON.parse(res.body).error.code).toBe('INTERNAL');
    errors.length = 0;
  });
});
