/**
 * The one database interface the core talks to. Two drivers implement it: postgres.js (a pooled
 * TCP connection) and, later, the RDS Data API. The contract is the intersection of what both can do:
 *
 * - Parameters are positional (`$1`, `$2`, …) and always bound, never spliced into the text.
 * - A JSON parameter is passed as JSON *text* and cast in SQL (`$1::jsonb`); the Data API has no array
 *   parameters, so arrays travel as JSON too (`jsonb_array_elements($1::jsonb)`).
 * - One statement per call (the Data API refuses multi-statement calls).
 * - `bigint` results come back as JS numbers (exact up to 2^53, i.e. 9 quadrillion events); `xid8`
 *   and anything that must stay exact is cast to `text` in the SQL. jsonb comes back parsed.
 * - Row counts are not part of the contract (data-api-local reports them wrongly): a statement whose
 *   effect must be checked uses `RETURNING` and the caller counts rows.
 * - Only transaction-scoped state: `set_config(..., true)`, `pg_advisory_xact_lock*`. No session
 *   advisory locks and no `SET` without `LOCAL`: over the Data API consecutive calls may run on
 *   different connections.
 */
export type Row = Record<string, unknown>;

export interface Queryable {
  query<T extends object = Row>(text: string, params?: readonly unknown[]): Promise<T[]>;
}

/** Runs inside a transaction; it is committed when the callback resolves, rolled back when it throws. */
export type Tx = Queryable;

export interface TransactionOptions {
  /** Defaults to READ COMMITTED, which every protocol in this project is reasoned for. */
  isolation?: 'read committed' | 'repeatable read' | 'serializable';
}

export interface Db extends Queryable {
  transaction<T>(fn: (tx: Tx) => Promise<T>, options?: TransactionOptions): Promise<T>;
  close(): Promise<void>;
}

/**
 * Awaits statements sent together in one transaction without waiting for each other (postgres.js
 * pipelines them in one round trip; the Data API driver sends them one after the other) and
 * reports the first failure in the order they were sent. The server runs them in that order, each
 * with a snapshot taken when it starts, and after a failure refuses the rest of the transaction
 * (25P02), so a later failure only echoes the first. Every promise is awaited: none is left
 * rejected and unhandled.
 */
export async function inOrder<const T extends readonly Promise<unknown>[]>(sent: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(sent);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}
