import { acquireProjectorLease, projectBatch } from '../functions/core/async/projector.ts';
import { breakages, resetBreakages } from '../functions/core/breakages.ts';
import { appendToStream } from '../functions/core/event-store/index.ts';
import type { NewEvent } from '../functions/core/event-store/types.ts';
import { ensureProjection } from '../functions/core/projections/ensure.ts';
import { acquireRebuild, continueRebuild, replay, startRebuild } from '../functions/core/rebuild/index.ts';
import type { Db } from '../functions/db/types.ts';
import { customerTotals } from '../functions/domain/customer-totals.ts';
import { ORDER_SUMMARY_COLUMNS, ORDER_SUMMARY_MERGE, orderSummary, orderSummaryApplyStatement } from '../functions/domain/order-summary.ts';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { emmettStore } from './emmett.ts';
import { closedLoop, freshDatabase, now, orderEvent, percentile, prng, sectionDoc, sleep } from './lib.ts';

const ORDERS_PER_WORKER = 50;
const streamOf = (w: number, i: number) => `b${w}-${i % ORDERS_PER_WORKER}`;

export interface AppendResult {
  perSecond: number;
  p50: number;
  p99: number;
  max: number;
  /**
   * CPU time per append, in µs, over the whole run (warm-up included, as its appends are counted):
   * the server's, summed over the `postgres` processes on this machine that run at its end
   * (backends, WAL writer, checkpointer, autovacuum launcher; an autovacuum worker that starts and
   * ends within the run is missed; undefined when none is local, as with a remote DATABASE_URL),
   * and this Node.js process's (the system's client and driver). On a machine whose cores the
   * client and the server share, appends/s follows their sum.
   */
  serverCpuUs?: number;
  clientCpuUs: number;
}

/** CPU ticks (user + system) of every process named `postgres` here; undefined when there is none. */
function postgresTicks(): number | undefined {
  let ticks = 0;
  let found = false;
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'postgres') continue;
      // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
      found = true;
    } catch {
      // The process ended meanwhile (its ticks are lost: a few, from a short-lived backend).
    }
  }
  return found ? ticks : undefined;
}
const MICROSECONDS_PER_TICK = 10_000; // USER_HZ, 100 on Linux (`getconf CLK_TCK`)

/**
 * `closedLoop` with CPU per append measured around it, before the database is dropped (its
 * backends end with it). A process that ends during the run takes its ticks with it: no backend
 * here (the pools keep their connections), but an autovacuum worker may.
 */
async function measuredLoop(concurrency: number, durationMs: number, op: (w: number, i: number) => Promise<unknown>): Promise<AppendResult> {
  let ops = 0;
  const server0 = existsSync('/proc') ? postgresTicks() : undefined;
  const client0 = process.cpuUsage();
  const r = await closedLoop(concurrency, durationMs, (w, i) => {
    ops += 1;
    return op(w, i);
  });
  const client = process.cpuUsage(client0);
  const server1 = server0 === undefined ? undefined : postgresTicks();
  return {
    ...r,
    serverCpuUs: server0 === undefined || server1 === undefined ? undefined : ((server1 - server0) * MICROSECONDS_PER_TICK) / ops,
    clientCpuUs: (client.user + client.system) / ops,
  };
}

/** The raw baseline's tables: the events and the summary, with no stream table and no projection versions. */
export async function createRawTables(db: Db): Promise<void> {
  await db.query(`create table raw_events (
    global_position bigint generated always as identity primary key, stream_id text not null, stream_position bigint not null,
    event_id uuid not null unique, type text not null, data jsonb not null, metadata jsonb not null default '{}',
    recorded_at timestamptz not null default now(), unique (stream_id, stream_position))`);
  await db.query(`create table raw_order_summary (${ORDER_SUMMARY_COLUMNS})`);
}

/**
 * The raw baseline's append: one statement, autocommit, that inserts the event and upserts the
 * summary with the document its client computed. No stream table, no concurrency check beyond the
 * unique index, no locks: the physical floor.
 */
export const RAW_APPEND_STATEMENT = `with ins as (
    insert into raw_events (stream_id, stream_position, event_id, type, data) values ($1, $2::bigint, $3::uuid, $4, $5::jsonb)
    returning global_position)
  insert into raw_order_summary as cur (order_id, sections, events_applied, last_global_position)
  select $6, $7::jsonb, 1, global_position from ins
  on conflict (order_id) do update set ${ORDER_SUMMARY_MERGE}`;

/** RAW_APPEND_STATEMENT's parameters for `event`, the `version`-th of order `orderId`'s stream. */
export function rawAppendParams(orderId: string, version: number, event: NewEvent & { id: string }): unknown[] {
  const { name, doc } = sectionDoc(event as { id: string; type: string; data: Record<string, unknown> });
  return [`order-${orderId}`, version, event.id, event.type, JSON.stringify(event.data), orderId, JSON.stringify({ [name]: doc })];
}

/**
 * Scenario 1. One system, one concurrency, one repetition, on a fresh database: `concurrency`
 * closed loops, each appending one event at a time to its own 50 order streams, for `durationMs`.
 */
export async function appendRun(system: 'ledgerline' | 'raw' | 'raw-tx' | 'emmett', serverUrl: string, concurrency: number, durationMs: number): Promise<AppendResult> {
  const d = await freshDatabase(serverUrl, { migrated: system === 'ledgerline', max: concurrency });
  try {
    const randoms = Array.from({ length: concurrency }, (_, w) => prng(1000 + w));
    if (system === 'ledgerline') {
      await ensureProjection(d.db, orderSummary);
      return await measuredLoop(concurrency, durationMs, (w, i) => {
        const orderId = streamOf(w, i);
        const { type, data } = orderEvent(randoms[w]!, orderId, i);
        // No caller-chosen id (neither baseline deduplicates by id): the store names it (a time-ordered id, event-id.ts).
        // As the HTTP API appends: given the Db, one autocommit statement (append.ts).
        return appendToStream(d.db, `order-${orderId}`, [{ type, data }], { projections: [orderSummary] });
      });
    }
    if (system === 'raw' || system === 'raw-tx') {
      await createRawTables(d.db);
      const versions = new Map<string, number>();
      const statement = RAW_APPEND_STATEMENT;
      return await measuredLoop(concurrency, durationMs, (w, i) => {
        const orderId = streamOf(w, i);
        const event = orderEvent(randoms[w]!, orderId, i);
        const version = (versions.get(orderId) ?? 0) + 1;
        versions.set(orderId, version);
        const params = rawAppendParams(orderId, version, event);
        // raw-tx: the same statement inside BEGIN … COMMIT, which is what an append that composes
        // with the caller's other writes needs; it shows what the explicit transaction costs alone.
        return system === 'raw' ? d.db.query(statement, params) : d.db.transaction((tx) => tx.query(statement, params));
      });
    }
    const store = await emmettStore(d.url, concurrency);
    try {
      return await measuredLoop(concurrency, durationMs, (w, i) => {
        const orderId = streamOf(w, i);
        const { type, data } = orderEvent(randoms[w]!, orderId, i);
        return store.append(`order-${orderId}`, { type, data: data as Record<string, unknown> });
      });
    } finally {
      await store.close();
    }
  } finally {
    await d.drop();
  }
}

/** `count` order events straight into the log (no projection), 200 orders, the five observation types. */
export async function seedLog(db: Db, count: number, orders = 10_000): Promise<void> {
  for (let from = 1; from <= count; from += 200_000) {
    const to = Math.min(count, from + 199_999);
    await db.query(
      `insert into events (stream_id, stream_position, event_id, type, data, metadata)
       select 'order-r' || (g % $3), g / $3 + 1, gen_random_uuid(),
              (array['OrderCreated','InventoryReserved','PaymentProcessed','ShippingCalculated','LoyaltyPointsUpdated'])[g % 5 + 1],
              jsonb_build_object('orderId', 'r' || (g % $3), 'occurredAt',
                to_char((timestamptz '2026-01-01 00:00:00+00' + abs(hashint8(g) % 86400000) * interval '1 millisecond') at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'amount', g % 1000, 'status', 'successful'),
              '{}'::jsonb
         from generate_series($1::bigint, $2::bigint) as g`,
      [from, to, orders],
    );
  }
  await db.query(
    `insert into streams (stream_id, version) select stream_id, max(stream_position) from events group by stream_id
     on conflict (stream_id) do update set version = excluded.version`,
  );
  // Vacuum too: otherwise autovacuum visits the freshly loaded table while a scenario measures.
  await db.query('vacuum analyze events');
  await db.query('vacuum analyze streams');
}

export interface ReplayRun {
  ledgerline: number;
  setBased: number;
  rowByRow: number;
  rowByRowEvents: number;
  wholeRebuildMs: number;
}

/**
 * Scenario 2, one repetition over the same seeded log: ledgerline's blue-green rebuild (replay
 * phase timed: fencing, checkpoint, skip deletion per batch), the set-based lower bound (one
 * INSERT … SELECT computing the same documents), and row-by-row replay (one upsert statement per
 * event, on a prefix of the log). Events per second.
 */
export async function replayRun(db: Db, events: number, rowByRowEvents: number, batchSize: number): Promise<ReplayRun> {
  const t0 = now();
  const { lease } = await acquireRebuild(db, orderSummary, { owner: 'bench', mode: 'blue-green' });
  await startRebuild(db, orderSummary, lease);
  const r0 = now();
  while (!(await replay(db, orderSummary, lease, { batchSize, maxMs: 600_000 })).done);
  const replayMs = now() - r0;
  // The rest (drain, flip, release) as every rebuild runs it; replay is done, so it starts at drain.
  await continueRebuild(db, orderSummary, lease);
  const wholeRebuildMs = now() - t0;

  await db.query('drop table if exists lb_order_summary');
  await db.query(`create table lb_order_summary (${ORDER_SUMMARY_COLUMNS})`);
  const s0 = now();
  // The projection's own apply statement (the one its replay batches run), over the whole log at
  // once: no batches, no protocol, every order written once.
  await db.query(orderSummaryApplyStatement('lb_order_summary', '(select * from events)'));
  const setMs = now() - s0;

  await db.query('drop table if exists rbr_order_summary');
  await db.query(`create table rbr_order_summary (${ORDER_SUMMARY_COLUMNS})`);
  const statement = `insert into rbr_order_summary as cur (order_id, sections, events_applied, last_global_position)
                     values ($1, $2::jsonb, 1, $3::bigint) on conflict (order_id) do update set ${ORDER_SUMMARY_MERGE}`;
  const b0 = now();
  let done = 0;
  let after = 0;
  while (done < rowByRowEvents) {
    const rows = await db.query<{ global_position: number; stream_id: string; event_id: string; type: string; data: Record<string, unknown> }>(
      'select global_position, stream_id, event_id::text, type, data from events where global_position > $1 order by global_position limit 1000',
      [after],
    );
    if (rows.length === 0) break;
    for (const r of rows) {
      if (done >= rowByRowEvents) break;
      const { name, doc } = sectionDoc({ id: r.event_id, type: r.type, data: r.data });
      await db.query(statement, [r.stream_id.slice(6), JSON.stringify({ [name]: doc }), r.global_position]);
      done++;
      after = r.global_position;
    }
  }
  const rowMs = now() - b0;
  return {
    ledgerline: (events / replayMs) * 1000,
    setBased: (events / setMs) * 1000,
    rowByRow: (done / rowMs) * 1000,
    rowByRowEvents: done,
    wholeRebuildMs,
  };
}

/** The tail of one group of append latencies, ms. */
export interface LatencyTail {
  p99: number;
  max: number;
  count: number;
}

const tailOf = (sorted: readonly number[]): LatencyTail => ({ p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? NaN, count: sorted.length });

export interface FlipRun {
  steady: LatencyTail;
  /** Appends that overlap a Start or a Flip step (the target's figure), then each step apart. */
  phase: LatencyTail;
  start: LatencyTail;
  flip: LatencyTail;
  /** Appends during a rebuild (replay and drain competing for the cores) that overlap no Start or Flip. */
  during: LatencyTail;
  rebuilds: number;
  flipAttempts: number;
}

/**
 * Scenario 3, one repetition: `concurrency` writers append continuously (ledgerline, order summary
 * inline; each append as scenario 1's, the HTTP API's: one autocommit statement). First `steadyMs` with no rebuild; then `rebuilds` blue-green rebuilds back to back, run
 * by a worker thread (flip-worker.ts: as in production, not on the writers' event loop). An
 * append counts for "Start/Flip" when its interval overlaps a Start or Flip step. After Start
 * the replay waits `settleMs`, so that the appends overlapping Start finish before the replay's
 * batches compete with them for the same two cores: the figure is Start's stall, not the replay's
 * load. That load is reported apart: appends during a rebuild that overlap neither.
 */
export async function flipRun(serverUrl: string, concurrency: number, seedEvents: number, steadyMs: number, rebuilds: number, settleMs = 500): Promise<FlipRun> {
  const d = await freshDatabase(serverUrl, { max: concurrency + 4 });
  try {
    await ensureProjection(d.db, orderSummary);
    await seedLog(d.db, seedEvents);
    const samples: Array<[number, number]> = [];
    let stop = false;
    // Absolute times: the rebuild worker's thread has its own performance.now() origin.
    const at = () => performance.timeOrigin + now();
    const writers = Array.from({ length: concurrency }, async (_, w) => {
      const random = prng(2000 + w);
      for (let i = 0; !stop; i++) {
        const orderId = streamOf(w, i);
        const { type, data } = orderEvent(random, orderId, i);
        const t0 = at();
        await appendToStream(d.db, `order-${orderId}`, [{ type, data }], { projections: [orderSummary] });
        samples.push([t0, at()]);
      }
    });
    await sleep(500);
    const steadyFrom = at();
    await sleep(steadyMs);
    const steadyTo = at();
    // A worker does not inherit tsx's loader; it registers it, then loads the TypeScript file.
    const entry = new URL('./flip-worker.ts', import.meta.url).href;
    const worker = new Worker(`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`, {
      eval: true,
      workerData: { url: d.url, rebuilds, settleMs },
    });
    const { windows, spans, flipAttempts } = await new Promise<{ windows: Array<[number, number, 'start' | 'flip']>; spans: Array<[number, number]>; flipAttempts: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', (e) => { console.error('rebuild worker:', e); reject(e); });
      worker.once('exit', (code) => reject(new Error(`the rebuild worker exited with ${code}`)));
    });
    stop = true;
    await Promise.all(writers);
    const latency = ([a, b]: [number, number]) => b - a;
    const steady = samples.filter(([a, b]) => a >= steadyFrom && b <= steadyTo).map(latency).sort((x, y) => x - y);
    const overlaps = ([a, b]: [number, number], ranges: ReadonlyArray<readonly [number, number, ...unknown[]]>) => ranges.some(([w0, w1]) => a < w1 && b > w0);
    const overlapping = (ranges: typeof windows) => samples.filter((x) => overlaps(x, ranges)).map(latency).sort((x, y) => x - y);
    const during = samples.filter((x) => !overlaps(x, windows) && spans.some(([s0, s1]) => x[0] >= s0 && x[1] <= s1)).map(latency).sort((x, y) => x - y);
    return {
      steady: tailOf(steady),
      phase: tailOf(overlapping(windows)),
      start: tailOf(overlapping(windows.filter((w) => w[2] === 'start'))),
      flip: tailOf(overlapping(windows.filter((w) => w[2] === 'flip'))),
      during: tailOf(during),
      rebuilds,
      flipAttempts,
    };
  } finally {
    await d.drop();
  }
}

export interface LagRun {
  p50: number;
  p99: number;
  max: number;
  events: number;
}

/**
 * Scenario 4, one repetition of one variant: 4 writers append about `ratePerSecond` events in all;
 * after 1 s one more transaction appends an event and holds it open for `holdMs` (or none, for the
 * steady baseline). A projector polls every 20 ms. Lag = time from an append's commit to the end of
 * the projector batch that applied it, over the events committed while the held one was open.
 */
export async function lagRun(serverUrl: string, variant: 'gap-aware' | 'xmin-horizon' | 'no-held', holdMs: number, ratePerSecond: number): Promise<LagRun> {
  const d = await freshDatabase(serverUrl, { max: 12 });
  try {
    await ensureProjection(d.db, customerTotals);
    const lease = (await acquireProjectorLease(d.db, customerTotals, { owner: 'bench', leaseMs: 600_000 }))!;
    resetBreakages();
    if (variant === 'xmin-horizon') breakages.asyncXminHorizon = true;
    const committed = new Map<number, number>(); // position -> commit time
    const projectedAt = new Map<number, number>();
    let stop = false;
    const projector = (async () => {
      while (!stop) {
        const batch = await projectBatch(d.db, customerTotals, lease, { batchSize: 1_000 });
        const t = now();
        const open = new Set(batch.gaps.map((g) => g.position));
        for (const [p] of committed) if (!projectedAt.has(p) && p <= batch.checkpoint && !open.has(p)) projectedAt.set(p, t);
        await sleep(20);
      }
    })();
    const perWriterDelay = (4 * 1000) / ratePerSecond;
    const writers = Array.from({ length: 4 }, async (_, w) => {
      const random = prng(3000 + w);
      for (let i = 0; !stop; i++) {
        const orderId = streamOf(w, i);
        const { type, data } = orderEvent(random, orderId, i);
        const r = await d.db.transaction((tx) => appendToStream(tx, `order-${orderId}`, [{ type, data }]));
        committed.set(r.globalPositions[0]!, now());
        await sleep(perWriterDelay);
      }
    });
    await sleep(1_000);
    const heldFrom = now();
    let heldPosition = -1;
    if (variant !== 'no-held') {
      await d.db.transaction(async (tx) => {
        const r = await appendToStream(tx, 'order-held', [{ type: 'OrderCreated', data: { orderId: 'held', occurredAt: new Date().toISOString(), customerId: 'c-held', totalAmount: 1, currency: 'EUR', items: [] } }]);
        heldPosition = r.globalPositions[0]!;
        // An append may not sit idle in its transaction for 10 s (APPEND_TIMEOUTS ends it first), so
        // this stands for any slow writer that drew a position: lift the idle limit, then hold.
        await tx.query("select set_config('idle_in_transaction_session_timeout', '0', true)");
        await sleep(holdMs);
      });
    } else {
      await sleep(holdMs);
    }
    const heldTo = now();
    // Let the projector catch up with everything committed during the hold.
    const deadline = now() + 30_000;
    while (now() < deadline && [...committed].some(([p, t]) => t >= heldFrom && t <= heldTo && !projectedAt.has(p))) await sleep(50);
    stop = true;
    await Promise.all([...writers, projector]);
    const lags = [...committed]
      .filter(([p, t]) => p !== heldPosition && t >= heldFrom && t <= heldTo)
      .map(([p, t]) => (projectedAt.get(p) ?? NaN) - t)
      .sort((a, b) => a - b);
    return { p50: percentile(lags, 50), p99: percentile(lags, 99), max: lags[lags.length - 1] ?? NaN, events: lags.length };
  } finally {
    resetBreakages();
    await d.drop();
  }
}

export interface IdsRun {
  kind: 'time-ordered' | 'random';
  walBytesPerAppend: number;
  fullPageImagesPerAppend: number;
  perSecond: number;
}

/**
 * Scenario 6, one repetition: on `db`'s log (seeded by the caller, analysed), for each kind of
 * event id in `order`: a VACUUM and a CHECKPOINT, then `appends` one-event appends by `concurrency` writers to
 * the log's existing order streams (given the Db, as in scenario 1), and the WAL they wrote
 * (`pg_current_wal_lsn`) and its full-page images (`pg_stat_wal.wal_fpi`) per append. Each kind
 * starts from a checkpoint, so each pays the first change of every page it touches after it: that
 * is what a random id adds on every page of the id index it lands on. The random kind is this
 * store with `breakages.randomEventIds` (version 4 ids, as `randomUUID` gives): the same append
 * otherwise. The other indexes and tables each append touches (its stream's row and positions, its
 * order's summary) are the same for both: writers pick orders at random.
 */
export async function idsRun(db: Db, orders: number, appends: number, concurrency: number, order: ReadonlyArray<IdsRun['kind']>, seed: number): Promise<IdsRun[]> {
  const runs: IdsRun[] = [];
  // No autovacuum during a measurement: 20,000 appends update most of 10,000 summaries and stream
  // rows, which starts it in the middle of whichever kind runs then, and its WAL is not the ids'.
  // A VACUUM before each measurement leaves each the same tables to start from instead.
  await db.query(`do $$ declare t regclass; begin
    for t in select c.oid from pg_class as c where c.relkind = 'r' and c.relnamespace = current_schema()::regnamespace loop
      execute format('alter table %s set (autovacuum_enabled = off)', t);
    end loop; end $$`);
  try {
    for (const kind of order) {
      breakages.randomEventIds = kind === 'random';
      await db.query('vacuum');
      await db.query('checkpoint');
      const wal = () => db.query<{ lsn: string; fpi: string }>('select pg_current_wal_lsn()::text as lsn, wal_fpi::text as fpi from pg_stat_wal');
      const [before] = await wal();
      const random = prng(seed + runs.length);
      let next = 0;
      const t0 = now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          for (let i = next++; i < appends; i = next++) {
            const orderId = `r${Math.floor(random() * orders)}`;
            const { type, data } = orderEvent(random, orderId, i);
            await appendToStream(db, `order-${orderId}`, [{ type, data }], { projections: [orderSummary] });
          }
        }),
      );
      const ms = now() - t0;
      const [after] = await db.query<{ bytes: string; fpi: string }>(
        'select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::text as bytes, wal_fpi::text as fpi from pg_stat_wal',
        [before!.lsn],
      );
      runs.push({
        kind,
        walBytesPerAppend: Number(after!.bytes) / appends,
        fullPageImagesPerAppend: (Number(after!.fpi) - Number(before!.fpi)) / appends,
        perSecond: (appends / ms) * 1000,
      });
    }
  } finally {
    resetBreakages();
  }
  return runs;
}
