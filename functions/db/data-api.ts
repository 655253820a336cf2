import {
  BeginTransactionCommand,
  CommitTransactionCommand,
  ExecuteStatementCommand,
  RollbackTransactionCommand,
  type ColumnMetadata,
  type Field,
  type RDSDataClient,
  type SqlParameter,
} from '@aws-sdk/client-rds-data';
import { DatabaseError } from '../core/errors.ts';
import type { Db, Row, TransactionOptions, Tx } from './types.ts';

/**
 * The RDS Data API driver: the same Db/Tx contract over HTTPS, for Lambdas that hold no connection
 * and need no VPC path to the database. Every call is one HTTPS request (ExecuteStatement,
 * BeginTransaction, CommitTransaction, RollbackTransaction), so the Db contract's "one statement per
 * call" and "transaction-scoped state only" matter here: consecutive calls outside a transaction may
 * run on different connections, and a transaction is a `transactionId`.
 *
 * - Statements inside one transaction are sent one at a time, in the order they were issued: the
 *   core may issue independent statements together (postgres.js pipelines them on its connection),
 *   and the Data API gives no ordering guarantee for concurrent calls on one transaction.
 * - The client should be built with `maxAttempts: 1` (runtime.ts does): an SDK retry of an
 *   ExecuteStatement whose response was lost could run a statement twice inside the transaction.
 *   Retrying is the core's job, and it retries whole transactions (errors.ts says which).
 * - Secrets: the driver passes the secret's ARN; the Data API reads the secret on each call, so a
 *   rotated password needs no redeploy or reconnect.
 */
export interface DataApiOptions {
  client: RDSDataClient;
  resourceArn: string;
  secretArn: string;
  database: string;
}

export function createDataApiDb(options: DataApiOptions): Db {
  const arns = { resourceArn: options.resourceArn, secretArn: options.secretArn };
  const execute = async <T extends object>(text: string, params: readonly unknown[], transactionId?: string): Promise<T[]> => {
    try {
      const out = await options.client.send(
        new ExecuteStatementCommand({
          ...arns,
          database: options.database,
          sql: toNamedParameters(text),
          parameters: params.map((value, i) => toParameter(`p${i + 1}`, value)),
          includeResultMetadata: true,
          ...(transactionId ? { transactionId } : {}),
        }),
      );
      return toRows<T>(out.records ?? [], out.columnMetadata ?? []);
    } catch (error) {
      throw toDataApiError(error);
    }
  };
  return {
    query: (text, params = []) => execute(text, params),
    async transaction<T>(fn: (tx: Tx) => Promise<T>, txOptions: TransactionOptions = {}): Promise<T> {
      let transactionId: string;
      let queue: Promise<unknown> = Promise.resolve();
      const inOrder = <R>(send: () => Promise<R>): Promise<R> => {
        const next = queue.then(send, send);
        queue = next.catch(() => undefined);
        return next;
      };
      try {
        transactionId = (await options.client.send(new BeginTransactionCommand({ ...arns, database: options.database }))).transactionId!;
      } catch (error) {
        throw toDataApiError(error);
      }
      let result: T;
      try {
        if (txOptions.isolation && txOptions.isolation !== 'read committed') {
          await execute(`set transaction isolation level ${txOptions.isolation}`, [], transactionId);
        }
        result = await fn({ query: (text, params = []) => inOrder(() => execute(text, params, transactionId)) });
        await queue;
      } catch (error) {
        // The callback's own errors (a conflict, a validation error) pass through unchanged;
        // statement errors were already mapped by execute().
        await options.client.send(new RollbackTransactionCommand({ ...arns, transactionId })).catch(() => undefined);
        throw error;
      }
      try {
        await options.client.send(new CommitTransactionCommand({ ...arns, transactionId }));
      } catch (error) {
        throw toDataApiError(error);
      }
      return result;
    },
    async close() {},
  };
}

/**
 * `$1` → `:p1`, outside quotes, dollar-quoted bodies and comments. `$1::jsonb` keeps its cast.
 */
export function toNamedParameters(sql: string): string {
  let out = '';
  let i = 0;
  while (i < sql.length) {
    const c = sql[i]!;
    const rest = sql.slice(i);
    const skip = (/^'(?:[^']|'')*'/.exec(rest) ?? /^"(?:[^"]|"")*"/.exec(rest) ?? /^--[^\n]*/.exec(rest) ?? /^\/\*[\s\S]*?\*\//.exec(rest))?.[0];
    if (skip) {
      out += skip;
      i += skip.length;
      continue;
    }
    const dollar = /^\$([A-Za-z_]*)\$/.exec(rest);
    if (dollar) {
      const end = sql.indexOf(dollar[0], i + dollar[0].length);
      const body = end === -1 ? rest : sql.slice(i, end + dollar[0].length);
      out += body;
      i += body.length;
      continue;
    }
    const param = /^\$(\d+)/.exec(rest);
    if (param) {
      out += `:p${param[1]}`;
      i += param[0].length;
      continue;
    }
    out += c;
    i += 1;
  }
  return out;
}

/**
 * JS values to Data API parameters. Integers outside 32 bits, bigints and anything that must stay
 * exact travel as text (the SQL casts them, as the Db contract asks); JSON travels as text too (the
 * Data API has no array parameters); dates as ISO text with milliseconds.
 */
export function toParameter(name: string, value: unknown): SqlParameter {
  if (value === null || value === undefined) return { name, value: { isNull: true } };
  if (typeof value === 'boolean') return { name, value: { booleanValue: value } };
  if (typeof value === 'number') {
    if (Number.isInteger(value) && Math.abs(value) <= 2_147_483_647) return { name, value: { longValue: value } };
    if (Number.isSafeInteger(value)) return { name, value: { stringValue: String(value) } };
    return { name, value: { doubleValue: value } };
  }
  if (typeof value === 'bigint') return { name, value: { stringValue: value.toString() } };
  if (value instanceof Date) return { name, value: { stringValue: value.toISOString() } };
  if (typeof value === 'string') return { name, value: { stringValue: value } };
  return { name, value: { stringValue: JSON.stringify(value) } };
}

/** Records with their column metadata to row objects, typed as the postgres.js driver types them. */
export function toRows<T extends object>(records: Field[][], columns: ColumnMetadata[]): T[] {
  return records.map((record) => {
    const row: Row = {};
    record.forEach((field, i) => {
      const column = columns[i] ?? {};
      row[column.label ?? column.name ?? `column${i}`] = fromField(field, column.typeName ?? '');
    });
    return row as T;
  });
}

export function fromField(field: Field, typeName: string): unknown {
  if (field.isNull) return null;
  if (field.booleanValue !== undefined) return field.booleanValue;
  if (field.longValue !== undefined) return field.longValue;
  if (field.doubleValue !== undefined) return field.doubleValue;
  if (field.blobValue !== undefined) return Buffer.from(field.blobValue);
  if (field.arrayValue !== undefined) {
    const a = field.arrayValue;
    return a.longValues ?? a.doubleValues ?? a.booleanValues ?? a.stringValues ?? [];
  }
  const text = field.stringValue ?? '';
  const type = typeName.toLowerCase();
  if (type === 'json' || type === 'jsonb') return JSON.parse(text) as unknown;
  if (type === 'int8' || type === 'bigserial' || type === 'int4' || type === 'int2' || type === 'serial') {
    const n = Number(text);
    if (!Number.isSafeInteger(n)) throw new RangeError(`bigint ${text} exceeds 2^53; cast it to text`);
    return n;
  }
  if (type === 'bool') return text === 't' || text === 'true';
  if (type === 'timestamptz' || type === 'timestamp') return parseTimestamp(text);
  return text;
}

/**
 * The Data API returns timestamps as UTC text without a zone ("2026-11-29 10:00:00.123"); postgres.js
 * returns a Date, and so does this driver. (data-api-local sends ISO text, already truncated to whole
 * seconds: SQL that needs the exact time casts it to text, as append.ts does for `recorded_at`.)
 */
function parseTimestamp(text: string): Date {
  const m = /^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d(?::?\d\d)?)?$/.exec(text);
  if (!m) throw new RangeError(`unexpected timestamp ${JSON.stringify(text)} from the Data API`);
  const millis = (m[3] ?? '.0').slice(0, 4).padEnd(4, '0');
  const zone = m[4] ?? 'Z';
  return new Date(`${m[1]}T${m[2]}${millis}${zone.length === 3 ? `${zone}:00` : zone}`);
}

/**
 * Data API errors carry the PostgreSQL error in their message ("…; SQLState: 23505"); the SQLSTATE
 * is what the core branches on. Throttling and unavailability have none: retryable.
 */
export function toDataApiError(error: unknown): DatabaseError {
  if (error instanceof DatabaseError) return error;
  const e = error as { name?: string; message?: string };
  const message = e?.message ?? 'Data API error';
  const sqlState = /SQLState:\s*([0-9A-Z]{5})/.exec(message)?.[1] ?? sqlStateFromMessage(message);
  const constraint = /constraint "([^"]+)"/.exec(message)?.[1];
  // The SDK error carries the whole HTTP response; keep only what explains the failure.
  const cause = { name: e?.name, message, requestId: (error as { $metadata?: { requestId?: string } })?.$metadata?.requestId };
  return new DatabaseError(message, { ...(sqlState ? { sqlState } : {}), ...(constraint ? { constraint } : {}), cause });
}

/**
 * A PostgreSQL error reported without its SQLSTATE (data-api-local's messages are
 * "ERROR: <message>\n  Position: …"; some Data API responses are too). The messages the core branches
 * on are matched to their SQLSTATE; any other PostgreSQL error becomes XX000, a non-retryable error,
 * never "no SQLSTATE", which the taxonomy reads as a lost connection and retries.
 */
const KNOWN_MESSAGES: Array<[RegExp, string]> = [
  [/duplicate key value violates unique constraint/, '23505'],
  [/could not serialize access/, '40001'],
  [/deadlock detected/, '40P01'],
  [/canceling statement due to lock timeout|could not obtain lock/, '55P03'],
  [/canceling statement due to statement timeout/, '57014'],
  [/idle-in-transaction timeout/, '25P03'],
  [/relation "[^"]*" does not exist/, '42P01'],
  [/current transaction is aborted/, '25P02'],
  [/terminating connection due to administrator command/, '57P01'],
];

function sqlStateFromMessage(message: string): string | undefined {
  if (!/^(ERROR|FATAL|PANIC):/.test(message)) return undefined; // not a PostgreSQL error: throttling, unavailability, network
  for (const [pattern, sqlState] of KNOWN_MESSAGES) if (pattern.test(message)) return sqlState;
  // An unknown ERROR is the statement's fault; an unknown FATAL or PANIC ended the connection.
  return /^ERROR:/.test(message) ? 'XX000' : undefined;
}
