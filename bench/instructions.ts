import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { arch, platform, tmpdir } from 'node:os';
import { join } from 'node:path';
import { appendToStream } from '../functions/core/event-store/index.ts';
import type { ProjectionDefinition } from '../functions/core/projections/definition.ts';
import { ensureProjection } from '../functions/core/projections/ensure.ts';
import { migrate } from '../functions/db/migrate.ts';
import { loadMigrations } from '../functions/db/migrations-dir.ts';
import { createPostgresDb } from '../functions/db/postgres.ts';
import type { Db } from '../functions/db/types.ts';
import { orderSummary } from '../functions/domain/order-summary.ts';
import { startEmbeddedPostgres } from '../functions/local/embedded-postgres.ts';
import { orderEvent, prng } from './lib.ts';
import { RAW_APPEND_STATEMENT, createRawTables, rawAppendParams, seedLog } from './scenarios.ts';

/**
 * Scenario 5: the server's instructions per append, counted by callgrind. Appends/s on a shared
 * two-core VM moves by tens of percent from one run to the next; an instruction count depends on the
 * binaries and the inputs, not on what else the machine does (the report shows the bench's append
 * counted twice: the event ids are random and the tables grow, so the two differ a little), so it
 * compares variants that differ by a few percent, and says where the server's work goes.
 *
 * One backend (PostgreSQL's single-user mode, under valgrind) runs one-event appends as prepared
 * statements, each its own transaction, as the bench's clients send them: the same statement text
 * and the same parameters, captured from `appendToStream` itself (ledgerline) or built by the raw
 * baseline's own function. Per append: (count of `long` appends − count of `short` appends) /
 * (long − short), so that starting and stopping the backend cancel out; the difference is appends
 * to order streams that already exist, the bench's common case (300 orders of one stream each,
 * which the short run creates).
 *
 * What the count includes that a server behind the wire protocol does not do: reading each
 * EXECUTE line and parsing its literals (the wire protocol's Bind sends the parameters without a
 * statement to parse). Every row pays it, baseline included. What it leaves out: waits (the
 * commit's fsync is a system call, not instructions), other backends, and the client.
 */
export interface InstructionsResult {
  rows: Array<{ name: string; what: string; perAppend: number }>;
  /** The `ledgerline` row counted again, last. */
  again: number;
  appends: number;
  valgrind: string;
}

const ORDERS = 300;
/** Events in each log before the counts (see the setup). */
export const SEEDED_EVENTS = 20_000;

/** The variants: the bench's append, the same with less of the protocol's work, and the raw baseline. */
type Variant = { name: string; what: string; projections?: ProjectionDefinition[]; callerIds?: boolean };
const VARIANTS: Variant[] = [
  { name: 'raw', what: 'raw SQL: the bench baseline statement (insert the event, upsert the summary with the client’s document)' },
  {
    name: 'ledgerline',
    what: 'ledgerline_append with order_summary inline, the document computed by the writer and merged (the bench’s append)',
    projections: [orderSummary],
  },
  {
    name: 'ledgerline, document in SQL',
    what: 'the same, the document computed in SQL (a writer that sends none: before migration 010, or when it cannot compute it)',
    projections: [{ ...orderSummary, inlinePartial: undefined }],
  },
  {
    name: 'ledgerline, id from the caller',
    what: 'the bench’s append with an event id of the caller’s (a retried external event): migration 010’s body, ledgerline_append_general, called by the one-event body (migrations 012 to 014), which serves the rows above',
    projections: [orderSummary],
    callerIds: true,
  },
  {
    name: 'ledgerline, no projection',
    what: 'ledgerline_append with no inline projection (also the general body): the stream row, the insert and the timeouts, no projection lock, state read or upsert',
    projections: [],
  },
];

/** `{ skipped }` with the reason when it cannot run here (no valgrind). */
export async function instructionsRun(short = 300, long = 1300): Promise<InstructionsResult | { skipped: string }> {
  // Fewer appends than orders in the short run would leave stream creations in the difference.
  if (short < ORDERS || long <= short) throw new Error(`instructions: need ${ORDERS} <= short < long, got ${short} and ${long}`);
  const version = spawnSync('valgrind', ['--version'], { encoding: 'utf8' });
  if (version.status !== 0) return { skipped: 'valgrind is not installed here' };
  const { postgres } = (await import(`@embedded-postgres/${platform()}-${arch()}`)) as { postgres: string };

  // A server of its own, stopped before the count: single-user mode needs its data folder alone.
  const dir = mkdtempSync(join(tmpdir(), 'ledgerline-instructions-'));
  chmodSync(dir, 0o777); // the server runs as the `postgres` user when we are root
  try {
    const dataDir = join(dir, 'data');
    const server = await startEmbeddedPostgres({ dataDir });
    try {
      const db = createPostgresDb({ url: server.url, max: 2 });
      try {
        await migrate(db, loadMigrations());
        await ensureProjection(db, orderSummary);
        await createRawTables(db);
        // A log in use, with statistics, as autovacuum keeps them on a server that takes writes.
        // Single-user mode runs no autovacuum, and the appends' generic plans are made once per
        // backend: on empty tables with no statistics, the caller-id path's read of stored ids
        // was planned as a scan of the whole log (over 5 million instructions per append in a
        // run of this scenario on a few thousand events), which is not what a server in use does.
        await seedLog(db, SEEDED_EVENTS, 1_000);
        await db.query(
          'insert into raw_events (stream_id, stream_position, event_id, type, data) select stream_id, stream_position, event_id, type, data from events',
        );
        await db.query('analyze');
      } finally {
        await db.close();
      }
    } finally {
      await server.stop();
    }

    const owner = process.getuid?.() === 0 ? postgresUser() : {};
    const count = async (v: Variant, n: number, round: number): Promise<number> => {
      const name = v.name;
      const input = join(dir, `input-${n}.sql`);
      writeFileSync(input, (await script(v, n, round)).join('\n') + '\n');
      const out = join(dir, `callgrind-${n}.out`);
      const fd = openSync(input, 'r');
      try {
        const run = spawnSync('valgrind', ['--tool=callgrind', `--callgrind-out-file=${out}`, postgres, '--single', '-D', dataDir, 'postgres'], {
          ...owner,
          stdio: [fd, 'ignore', 'pipe'],
          encoding: 'utf8',
          maxBuffer: 64 * 1024 * 1024,
        });
        const error = /ERROR:.*/.exec(run.stderr ?? '');
        if (run.status !== 0 || error) throw new Error(`${name}: single-user backend failed: ${error?.[0] ?? run.stderr?.slice(-500)}`);
        const total = /^(?:summary|totals):\s+(\d+)/m.exec(readFileSync(out, 'utf8'));
        if (!total) throw new Error(`${name}: no total in ${out}`);
        return Number(total[1]);
      } finally {
        closeSync(fd);
        rmSync(out, { force: true });
      }
    };
    const perAppend = async (v: Variant, round: number) => ((await count(v, long, round)) - (await count(v, short, round))) / (long - short);
    const rows = [];
    for (const v of VARIANTS) rows.push({ name: v.name, what: v.what, perAppend: await perAppend(v, 1) });
    // The bench's append once more, on orders of its own, after the others have grown the tables:
    // how far the count moves between two runs of the same append is then in every report.
    const again = await perAppend(VARIANTS.find((v) => v.name === 'ledgerline')!, 2);
    return { rows, again, appends: long - short, valgrind: version.stdout.trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The lines single-user mode reads: a PREPARE of the statement, then one EXECUTE per append, with
 * the parameters as literals. Each variant and round has orders of its own (no append conflicts
 * with an earlier run's).
 */
async function script(v: Variant, n: number, round: number): Promise<string[]> {
  const random = prng(n);
  const lines: string[] = [];
  const tag = `${VARIANTS.indexOf(v)}-${n}-${round}`;
  if (v.name === 'raw') {
    lines.push(`prepare a(text, bigint, uuid, text, jsonb, text, jsonb) as ${oneLine(RAW_APPEND_STATEMENT)};`);
    const versions = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const orderId = `${tag}-${i % ORDERS}`;
      const version = (versions.get(orderId) ?? 0) + 1;
      versions.set(orderId, version);
      lines.push(`execute a(${rawAppendParams(orderId, version, orderEvent(random, orderId, i)).map(literal).join(', ')});`);
    }
    return lines;
  }
  for (let i = 0; i < n; i++) {
    const orderId = `${tag}-${i % ORDERS}`;
    const { id, type, data } = orderEvent(random, orderId, i);
    const event = v.callerIds ? { id, type, data } : { type, data };
    const { text, params } = await captured((db) => appendToStream(db, `order-${orderId}`, [event], { projections: v.projections! }));
    if (i === 0) lines.push(`prepare a as ${oneLine(text)};`);
    lines.push(`execute a(${params.map(literal).join(', ')});`);
  }
  return lines;
}

/**
 * The statement and parameters `append` sends given the Db, as the bench's clients and the HTTP API
 * append (its own transaction), answered as a first append that inserted its event.
 */
async function captured(append: (db: Db) => Promise<unknown>): Promise<{ text: string; params: readonly unknown[] }> {
  let sent: { text: string; params: readonly unknown[] } | undefined;
  const db: Db = {
    async query<T extends object>(text: string, params: readonly unknown[] = []): Promise<T[]> {
      if (sent) throw new Error('the append sent a second statement; this count assumes one');
      sent = { text, params };
      return [{ r: { current: 0, stored: [], inserted: [{ global_position: 1, stream_position: 1, recorded_at: '' }], states: [] } }] as T[];
    },
    transaction: () => Promise.reject(new Error('the append opened a transaction; this count assumes one autocommit statement')),
    close: () => Promise.resolve(),
  };
  await append(db);
  return sent!;
}

/** A statement on one line, as single-user mode reads them (the statements here hold no literal with a run of spaces). */
const oneLine = (sql: string) => sql.replace(/\s+/g, ' ').trim();

function literal(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean' || typeof value === 'number') return String(value);
  if (typeof value === 'string') {
    // Single-user mode ends a statement at a newline; JSON text escapes its own.
    if (value.includes('\n')) throw new Error('a parameter with a newline cannot be sent on one line');
    return `'${value.replace(/'/g, "''")}'`;
  }
  throw new Error(`no literal for ${typeof value}`);
}

function postgresUser(): { uid: number; gid: number } {
  const id = (flag: string) => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}
