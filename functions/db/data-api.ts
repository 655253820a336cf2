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
 * The RDS Data API driver (work in progress: the value and result mapping, statement rewriting and
 * error mapping are here and unit-tested; the behaviour suite over data-api-local is the Data API
 * issue's remaining work). Every call is an HTTPS request, so the Db contract's "one statement per
 * call" and "transaction-scoped state only" matter here: consecutive calls may run on different
 * connections, and a transaction is a `transactionId`.
 */
export interface DataApiOptions {
  client: RDSDataClient;
  resourceArn: string;
  secretArn: string;
  database: string;
}

export function createDataApiDb(options: DataApiOptions): Db {
  const execute = async <T extends object>(text: string, params: readonly unknown[], transactionId?: string): Promise<T[]> => {
    try {
      const out = await options.client.send(
        new ExecuteStatementCommand({
          resourceArn: options.resourceArn,
          secretArn: options.secretArn,
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
  const arns = { resourceArn: options.resourceArn, secretArn: options.secretArn };
  return {
    query: (text, params = []) => execute(text, params),
    async transaction<T>(fn: (tx: Tx) => Promise<T>, txOptions: TransactionOptions = {}): Promise<T> {
      let transactionId: string;
      try {
        transactionId = (await options.client.send(new BeginTransactionCommand({ ...arns, database: options.database }))).transactionId!;
      } catch (error) {
        throw toDataApiError(error);
      }
      try {
        if (txOptions.isolation && txOptions.isolation !== 'read committed') {
          await execute(`set transaction isolation level ${txOptions.isolation}`, [], transactionId);
        }
        const result = await fn({ query: (text, params = []) => execute(text, params, transactionId) });
        await options.client.send(new CommitTransactionCommand({ ...arns, transactionId }));
        return result;
      } catch (error) {
        await options.client.send(new RollbackTransactionCommand({ ...arns, transactionId })).catch(() => undefined);
        throw error instanceof DatabaseError ? error : toDataApiError(error);
      }
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
  return text;
}

/**
 * Data API errors carry the PostgreSQL error in their message ("…; SQLState: 23505"); the SQLSTATE
 * is what the core branches on. Throttling and unavailability have none: retryable.
 */
export function toDataApiError(error: unknown): DatabaseError {
  if (error instanceof DatabaseError) return error;
  const e = error as { name?: string; message?: string };
  const message = e?.message ?? 'Data API error';
  const sqlState = /SQLState:\s*([0-9A-Z]{5})/.exec(message)?.[1];
  const constraint = /constraint "([^"]+)"/.exec(message)?.[1];
  return new DatabaseError(message, { ...(sqlState ? { sqlState } : {}), ...(constraint ? { constraint } : {}), cause: error });
}
