import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalStack, type LocalStack } from '../support/local-stack.ts';
import { prng, randomOrderEvent } from '../support/orders.ts';

/** The operator CLI as a child process against the local stack, as on call would use it. */
let stack: LocalStack;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['functions/cli/bin.mjs', '--api', stack.api, '--sqs', stack.sqs, ...args],
      { timeout: 60_000 },
      (error, stdout, stderr) => resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function cliJson<T>(...args: string[]): Promise<T> {
  const r = await cli('--json', ...args);
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`ledgerline ${args.join(' ')} exited ${r.code}: ${r.stdout} ${r.stderr.slice(0, 500)}`);
  }
}

const drillEnv = { LEDGERLINE_INGEST_VISIBILITY_SECONDS: '1', LEDGERLINE_INGEST_MAX_RECEIVES: '2' };

beforeAll(async () => {
  // The drill: this consumer refuses LoyaltyPointsUpdated, as one deployed before the type existed.
  stack = await startLocalStack({ env: { ...drillEnv, LEDGERLINE_INGEST_REJECT_TYPES: 'LoyaltyPointsUpdated' } });
  const random = prng(5);
  for (let i = 0; i < 40; i++) {
    const orderId = `cli-${i % 10}`;
    const e = randomOrderEvent(random, orderId);
    await fetch(`${stack.api}/streams/order-${orderId}/events`, {
      method: 'POST',
      body: JSON.stringify({ events: [{ type: 'ShippingCalculated', data: { orderId, occurredAt: e.data.occurredAt, shippingCost: 1, estimatedDays: 2 } }] }),
    });
  }
}, 90_000);

afterAll(async () => {
  expect(await stack?.stop()).toBe(true);
}, 60_000);

describe('the ledgerline CLI', () => {
  it('lists projections as a table and as JSON', async () => {
    const human = await cli('projections');
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^NAME\s+KIND\s+STATE\s+LIVE/);
    expect(human.stdout).toContain('order_summary');
    const json = await cli('--json', 'projections');
    const parsed = JSON.parse(json.stdout) as Array<{ name: string; skipsPending: number }>;
    expect(parsed.map((p) => p.name).sort()).toEqual(['customer_totals', 'order_summary']);
  });

  it('starts a rebuild and watches it to done, with progress', async () => {
    const run = await cli('rebuild', 'start', 'order_summary', '--mode', 'in-place', '--watch', '--interval', '20');
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/\[[#-]{20}\] \d+% /);
    expect(run.stdout.trim().split('\n').at(-1)).toMatch(/100% done/);
    const json = await cli('--json', 'rebuild', 'start', 'order_summary', '--watch', '--interval', '20');
    const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { phase: string });
    expect(lines.at(-1)!.phase).toBe('done');
  });

  it('answers with clear exit codes', async () => {
    expect((await cli('bogus')).code).toBe(2);
    expect((await cli('rebuild', 'start', 'no_such_projection')).code).toBe(3);
    expect((await cli('rebuild', 'status', 'order_summary', randomUUID())).code).toBe(3);
    // resume never starts a rebuild: with none unfinished, or an unknown id, it refuses.
    expect((await cli('rebuild', 'resume', 'order_summary')).code).toBe(3);
    expect((await cli('rebuild', 'resume', 'order_summary', randomUUID())).code).toBe(3);
    expect((await cli('--api', 'http://127.0.0.1:9', 'projections')).code).toBe(5);
  });

  it('parks a poison message in the DLQ, and after the fix redrives it to a processed state', async () => {
    const sqs = new SQSClient({ endpoint: stack.sqs, region: 'us-east-1', credentials: { accessKeyId: 'l', secretAccessKey: 'l' } });
    const id = randomUUID();
    const body = JSON.stringify({ id, type: 'LoyaltyPointsUpdated', data: { orderId: 'cli-poison', occurredAt: '2026-11-29T10:00:00Z', pointsEarned: 5, totalPoints: 50, tierStatus: 'gold' } });
    await sqs.send(new SendMessageCommand({ QueueUrl: `${stack.sqs}/000000000000/ledgerline-ingest`, MessageBody: body }));
    sqs.destroy();

    let depth = 0;
    for (let i = 0; i < 60 && depth === 0; i++) {
      await sleep(500);
      const list = await cliJson<Array<{ name: string; visible: number }>>('dlq', 'list');
      depth = list.find((q) => q.name === 'ingest')!.visible;
    }
    expect(depth).toBe(1);
    const inspected = await cliJson<Array<{ body: string; receiveCount: number }>>('dlq', 'inspect', 'ingest');
    expect(inspected.map((m) => m.body)).toEqual([body]);
    await sleep(1_200); // inspect hides what it read for a second
    const dry = await cliJson<{ moved: number; preview: string[] }>('dlq', 'redrive', 'ingest', '--dry-run');
    expect(dry).toEqual({ moved: 0, preview: [body] });
    await sleep(1_200); // the dry run's reads become visible again

    // The fix: restart the stack with a consumer that handles the type; data and queues persist.
    expect(await stack.stop()).toBe(true);
    stack = await startLocalStack({ env: drillEnv, dataDir: stack.dataDir });
    const moved = await cliJson<{ moved: number }>('dlq', 'redrive', 'ingest');
    expect(moved.moved).toBe(1);
    let stored = 0;
    for (let i = 0; i < 40 && stored === 0; i++) {
      await sleep(250);
      const res = await fetch(`${stack.api}/streams/order-cli-poison`);
      if (res.status === 200) stored = ((await res.json()) as { events: unknown[] }).events.length;
    }
    expect(stored).toBe(1);
    const after = await cliJson<Array<{ name: string; visible: number; inFlight: number }>>('dlq', 'list');
    expect(after.find((q) => q.name === 'ingest')).toMatchObject({ visible: 0, inFlight: 0 });
  }, 120_000);
});
