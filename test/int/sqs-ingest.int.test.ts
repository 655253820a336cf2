import { randomUUID } from 'node:crypto';
import { GetQueueAttributesCommand, ReceiveMessageCommand, SendMessageBatchCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureProjection, resolveReadTarget } from '../../functions/core/projections/ensure.ts';
import { runRebuild } from '../../functions/core/rebuild/index.ts';
import type { Db } from '../../functions/db/types.ts';
import { orderSummary } from '../../functions/domain/order-summary.ts';
import { PROJECTIONS } from '../../functions/domain/projections.ts';
import { startLocalSqs, type LocalSqs } from '../../functions/local/local-sqs.ts';
import { startSqsPoller } from '../../functions/local/sqs-poller.ts';
import { createIngestHandler } from '../../functions/queue/ingest.ts';
import { expectReadModelMatchesLog, prng, randomOrderEvent } from '../support/orders.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
let db: Db;
let local: LocalSqs;
let sqs: SQSClient;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  t = await createTestDatabase({ max: 8 });
  db = t.db;
  for (const p of PROJECTIONS) await ensureProjection(db, p);
  local = await startLocalSqs();
  sqs = local.sqs;
});
afterAll(async () => {
  await local?.stop();
  await t?.drop();
});

function queueWithDlq(name: string, maxReceiveCount: number) {
  return local.queueWithDlq(name, maxReceiveCount, { VisibilityTimeout: '1' });
}

async function depth(url: string): Promise<number> {
  const a = (
    await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }),
    )
  ).Attributes!;
  return Number(a.ApproximateNumberOfMessages) + Number(a.ApproximateNumberOfMessagesNotVisible);
}

async function sendAll(url: string, bodies: string[]) {
  for (let i = 0; i < bodies.length; i += 10) {
    await sqs.send(
      new SendMessageBatchCommand({ QueueUrl: url, Entries: bodies.slice(i, i + 10).map((b, j) => ({ Id: String(j), MessageBody: b })) }),
    );
  }
}

describe('the SQS ingest path', () => {
  it('stores every valid observation once, parks every invalid one in the DLQ with its reason logged, and loses nothing', async () => {
    const random = prng(11);
    const q = await queueWithDlq(`ingest-${randomUUID().slice(0, 8)}`, 2);
    const orders = Array.from({ length: 15 }, (_, i) => `sqs-${i}`);
    const valid = Array.from({ length: 120 }, () => {
      const orderId = orders[Math.floor(random() * orders.length)]!;
      const e = randomOrderEvent(random, orderId);
      // Decisions are the system's; senders only observe.
      return e.type === 'OrderConfirmed' || e.type === 'OrderRejected' ? { ...e, type: 'ShippingCalculated', data: { orderId, occurredAt: e.data.occurredAt, shippingCost: 1, estimatedDays: 2 } } : e;
    });
    const duplicates = valid.filter(() => random() < 0.25);
    const invalid = [
      'not json at all',
      JSON.stringify({ id: randomUUID(), type: 'Unknown', data: { orderId: 'sqs-1', occurredAt: '2026-01-01T00:00:00Z' } }),
      JSON.stringify({ id: 'not-a-uuid', type: 'ShippingCalculated', data: { orderId: 'sqs-1', occurredAt: '2026-01-01T00:00:00Z', shippingCost: 1, estimatedDays: 1 } }),
      JSON.stringify({ id: randomUUID(), type: 'PaymentProcessed', data: { orderId: 'sqs-2', occurredAt: 'yesterday', amount: 1, status: 'ok', method: 'x', transactionId: 't' } }),
      JSON.stringify({ id: randomUUID(), type: 'OrderConfirmed', data: { orderId: 'sqs-3', occurredAt: '2026-01-01T00:00:00Z' } }),
    ];
    const bodies = [...valid, ...duplicates].map((e) => JSON.stringify(e)).concat(invalid);
    for (let i = bodies.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [bodies[i], bodies[j]] = [bodies[j]!, bodies[i]!];
    }

    const logged: Array<{ level: string; message: string; extra: Record<string, unknown> }> = [];
    const log = {
      info: (message: string, extra: Record<string, unknown> = {}) => logged.push({ level: 'info', message, extra }),
      warn: (message: string, extra: Record<string, unknown> = {}) => logged.push({ level: 'warn', message, extra }),
      error: (message: string, extra: Record<string, unknown> = {}) => logged.push({ level: 'error', message, extra }),
    };
    const handler = createIngestHandler({ db, projections: PROJECTIONS, log });
    const pollers = [0, 1].map(() => startSqsPoller({ sqs, queueUrl: q.url, queueArn: q.arn, handler, batchSize: 10, waitTimeSeconds: 1 }));
    await sendAll(q.url, bodies);

    // A rebuild of the order summary while the traffic is consumed.
    await sleep(200);
    await runRebuild(db, orderSummary, { owner: 'during-ingest', mode: 'blue-green', batchSize: 20 });

    for (let i = 0; i < 60 && (await depth(q.url)) > 0; i++) await sleep(250);
    await Promise.all(pollers.map((p) => p.stop()));
    expect(await depth(q.url)).toBe(0);

    const ids = valid.map((e) => e.id!);
    const stored = await db.query<{ id: string; n: number }>(
      `select event_id::text as id, count(*)::int as n from events
        where event_id in (select jsonb_array_elements_text($1::jsonb)::uuid) group by event_id`,
      [JSON.stringify(ids)],
    );
    expect(stored).toHaveLength(valid.length);
    expect(stored.every((s) => s.n === 1)).toBe(true);

    const parked: string[] = [];
    for (let i = 0; i < 10 && parked.length < invalid.length; i++) {
      const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl: q.dlqUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }));
      parked.push(...(r.Messages ?? []).map((m) => m.Body!));
    }
    expect(parked.sort()).toEqual([...invalid].sort());

    const rejections = logged.filter((l) => l.message === 'observation rejected');
    expect(rejections.length).toBeGreaterThanOrEqual(invalid.length * 2); // every receive logs its reason
    expect(rejections.every((r) => r.extra.code === 'VALIDATION_FAILED' && r.extra.reason)).toBe(true);
    expect(logged.filter((l) => l.level === 'error')).toEqual([]);

    await expectReadModelMatchesLog(db, (await resolveReadTarget(db, 'order_summary'))!.table);
  }, 60_000);

  it('redrives dead letters back to their queue after a fix, with a dry run that moves nothing', async () => {
    const q = await queueWithDlq(`redrive-${randomUUID().slice(0, 8)}`, 1);
    const orderId = 'redrive-1';
    // Parked because the sender used the wrong order id in the body; the fix is upstream, and the
    // same message then passes. Here: a handler that rejects everything until "fixed".
    let fixed = false;
    const real = createIngestHandler({ db, projections: PROJECTIONS, log: { info() {}, warn() {}, error() {} } });
    const handler: typeof real = async (event) => (fixed ? real(event) : { batchItemFailures: event.Records.map((r) => ({ itemIdentifier: r.messageId })) });
    const bodies = Array.from({ length: 3 }, (_, i) =>
      JSON.stringify({ id: randomUUID(), type: 'ShippingCalculated', data: { orderId, occurredAt: `2026-01-0${i + 1}T00:00:00Z`, shippingCost: i, estimatedDays: 1 } }),
    );
    await sendAll(q.url, bodies);
    const poller = startSqsPoller({ sqs, queueUrl: q.url, queueArn: q.arn, handler });
    for (let i = 0; i < 40 && (await depth(q.url)) > 0; i++) await sleep(250);
    await poller.stop();
    expect(await depth(q.dlqUrl)).toBe(3);

    const { redrive } = await import('../../functions/queue/redrive.ts');
    const preview = await redrive(sqs, { dlqUrl: q.dlqUrl, targetUrl: q.url, dryRun: true, visibilityTimeoutSeconds: 1 });
    expect(preview.preview.sort()).toEqual([...bodies].sort());
    expect(preview.moved).toBe(0);
    await sleep(1_100);
    expect(await depth(q.dlqUrl)).toBe(3);

    fixed = true;
    const moved = await redrive(sqs, { dlqUrl: q.dlqUrl, targetUrl: q.url });
    expect(moved.moved).toBe(3);
    const again = startSqsPoller({ sqs, queueUrl: q.url, queueArn: q.arn, handler });
    for (let i = 0; i < 40 && (await depth(q.url)) > 0; i++) await sleep(250);
    await again.stop();
    expect(await depth(q.dlqUrl)).toBe(0);
    const [row] = await db.query<{ n: number }>('select count(*)::int as n from events where stream_id = $1', [`order-${orderId}`]);
    expect(row!.n).toBe(3);
  }, 60_000);

  it('runs the middy Lambda entry with its module-scope configuration', async () => {
    process.env.DATABASE_URL = t.url;
    const { handler } = await import('../../functions/queue/ingest-lambda.ts');
    const id = randomUUID();
    const body = JSON.stringify({ id, type: 'ShippingCalculated', data: { orderId: 'lambda-1', occurredAt: '2026-01-01T00:00:00Z', shippingCost: 3, estimatedDays: 2 } });
    const record = (messageId: string, b: string) => ({
      messageId,
      receiptHandle: 'r',
      body: b,
      attributes: { ApproximateReceiveCount: '1', SentTimestamp: '0', SenderId: 's', ApproximateFirstReceiveTimestamp: '0' },
      messageAttributes: {},
      md5OfBody: '',
      eventSource: 'aws:sqs',
      eventSourceARN: 'arn:aws:sqs:us-east-1:000000000000:ingest',
      awsRegion: 'us-east-1',
    });
    const result = await handler({ Records: [record('m1', body), record('m2', '{')] }, { awsRequestId: 'req-1', functionName: 'ingest' } as never);
    expect(result).toEqual({ batchItemFailures: [{ itemIdentifier: 'm2' }] });
    const [row] = await db.query<{ n: number }>('select count(*)::int as n from events where event_id = $1::uuid', [id]);
    expect(row!.n).toBe(1);
  });
});
