import { readFileSync } from 'node:fs';
import { newEventId } from '../functions/core/event-store/event-id.ts';
import { createPostgresDb } from '../functions/db/postgres.ts';
import type { Db } from '../functions/db/types.ts';
import { migrate } from '../functions/db/migrate.ts';
import { loadMigrations } from '../functions/db/migrations-dir.ts';
import type { JsonObject, NewEvent } from '../functions/core/event-store/types.ts';
import { sectionOf, type Section } from '../functions/domain/order-summary.ts';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
export const now = () => performance.now();

/**
 * The machine's CPU time so far, in ticks of /proc/stat's `cpu` line: all of it, and `steal`, the
 * time the hypervisor gave to other guests while this one wanted to run. Undefined off Linux.
 */
export function cpuTicks(): { total: number; steal: number } | undefined {
  try {
    // user nice system idle iowait irq softirq steal (guest time is already counted in user)
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    if (fields.length < 8 || fields.some((f) => !Number.isFinite(f))) return undefined;
    return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7]! };
  } catch {
    return undefined;
  }
}

/** The share of the machine's CPU time between two cpuTicks() that was stolen. */
export function stealShare(from: ReturnType<typeof cpuTicks>, to: ReturnType<typeof cpuTicks>): number | undefined {
  if (!from || !to || to.total <= from.total) return undefined;
  return (to.steal - from.steal) / (to.total - from.total);
}

export { prng } from '../test/support/prng.ts';

/** The five observation types of the order summary, round robin, with a random source time. */
const TYPES = ['OrderCreated', 'InventoryReserved', 'PaymentProcessed', 'ShippingCalculated', 'LoyaltyPointsUpdated'] as const;

export function orderEvent(random: () => number, orderId: string, i: number): NewEvent & { id: string } {
  const type = TYPES[i % TYPES.length]!;
  const n = Math.floor(random() * 1000);
  const occurredAt = new Date(Date.UTC(2026, 0, 1) + Math.floor(random() * 86_400_000)).toISOString();
  const data: Record<string, unknown> = { orderId, occurredAt };
  if (type === 'OrderCreated') Object.assign(data, { customerId: `c-${n % 50}`, totalAmount: n, currency: 'EUR', items: [{ sku: `s${n}`, quantity: 1, price: n }] });
  if (type === 'InventoryReserved') Object.assign(data, { reservedItems: { [`s${n}`]: 1 }, warehouseId: `w${n % 3}` });
  if (type === 'PaymentProcessed') Object.assign(data, { transactionId: `t${n}`, amount: n, status: 'successful', method: 'card' });
  if (type === 'ShippingCalculated') Object.assign(data, { shippingCost: n / 10, estimatedDays: n % 9 });
  if (type === 'LoyaltyPointsUpdated') Object.assign(data, { pointsEarned: n % 50, totalPoints: n, tierStatus: 'silver' });
  // The kind of id the store gives (event-id.ts), so that the raw baseline inserts the same keys.
  return { id: newEventId(), type, data };
}

/**
 * The order-summary section an event becomes: ledgerline's own `sectionOf`, so that the raw-SQL and
 * Emmett baselines upsert exactly the document ledgerline's `apply` computes (observations only:
 * their section depends on no stored-event field but the id, type and data).
 */
export function sectionDoc(event: { id: string; type: string; data: Record<string, unknown> }): { name: string; doc: Section } {
  const [name, doc] = sectionOf({ ...event, data: event.data as JsonObject, streamId: '', streamPosition: 0, globalPosition: 0, metadata: {}, recordedAt: '' })!;
  return { name, doc };
}

export interface Stats {
  median: number;
  min: number;
  max: number;
}

export function stats(values: readonly number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return { median: mid, min: s[0] ?? NaN, max: s[s.length - 1] ?? NaN };
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Runs `concurrency` loops of `op` for `durationMs` (after a warm-up); latencies in ms. */
export async function closedLoop(
  concurrency: number,
  durationMs: number,
  op: (worker: number, i: number) => Promise<unknown>,
  warmupMs = 500,
): Promise<{ perSecond: number; p50: number; p99: number; max: number; count: number }> {
  const latencies: number[] = [];
  let measuring = false;
  let stop = false;
  const loops = Array.from({ length: concurrency }, async (_, w) => {
    for (let i = 0; !stop; i++) {
      const t0 = now();
      await op(w, i);
      if (measuring) latencies.push(now() - t0);
    }
  });
  await sleep(warmupMs);
  measuring = true;
  const t0 = now();
  await sleep(durationMs);
  measuring = false;
  const elapsed = now() - t0;
  stop = true;
  await Promise.all(loops);
  const sorted = latencies.sort((a, b) => a - b);
  return { perSecond: (sorted.length / elapsed) * 1000, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? NaN, count: sorted.length };
}

let counter = 0;
/** A fresh database on the bench server, optionally migrated. */
export async function freshDatabase(serverUrl: string, options: { migrated?: boolean; max?: number } = {}): Promise<{ db: Db; url: string; drop(): Promise<void> }> {
  const name = `bench_${process.pid}_${++counter}`;
  const admin = createPostgresDb({ url: serverUrl, max: 1 });
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.query(`create database ${name}`);
  await admin.close();
  const u = new URL(serverUrl);
  u.pathname = `/${name}`;
  const url = u.toString();
  const db = createPostgresDb({ url, max: options.max ?? 40, applicationName: 'ledgerline-bench' });
  if (options.migrated !== false) await migrate(db, loadMigrations());
  return {
    db,
    url,
    async drop() {
      await db.close();
      const a = createPostgresDb({ url: serverUrl, max: 1 });
      await a.query(`drop database if exists ${name} with (force)`);
      await a.close();
    },
  };
}

export const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : 'n/a');
export const range = (s: Stats, digits = 0) => `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
