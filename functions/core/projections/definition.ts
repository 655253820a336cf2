import type { Tx } from '../../db/types.ts';
import type { JsonObject, StoredEvent } from '../event-store/types.ts';
import { ident } from '../sql-ident.ts';

export type ProjectionKind = 'inline' | 'async';
export type ProjectionState = 'live' | 'rebuilding' | 'retired' | 'failed';

/**
 * A read model. The same batch `apply` runs inline (in the append transaction), in a rebuild's
 * replay and in its drain, so a rebuild is set-based and fast, and nothing differs between paths.
 *
 * Contract for `apply`: it receives events of `eventTypes` only, in global-position order within a
 * batch; across batches, events of one stream always arrive in stream order, but events of
 * different streams may arrive out of position order (a drain sees a late-committing append after
 * a later one). Each event is applied exactly once per version by the protocols; `apply` itself
 * need not be idempotent.
 */
export interface ProjectionDefinition {
  /** snake_case; also the read-model table prefix: version N lives in `<name>_v<N>`. */
  name: string;
  kind: ProjectionKind;
  eventTypes: readonly string[];
  /** Creates the version's table (if it does not exist) and its indexes. */
  createTable(tx: Tx, table: string): Promise<void>;
  /** Every table a version owns (default: just `table`): what a rebuild truncates and a release drops. */
  tables?(table: string): string[];
  apply(tx: Tx, table: string, events: readonly StoredEvent[]): Promise<void>;
  /**
   * The projection applies in SQL: `createTable` also creates the function `<table>_apply(events[])`,
   * which applies those events (rows of the log's type), and `apply` is `applyInSql`, which calls it. An append then applies a
   * `live` version inside its own server-side call (migration 004), so an append that feeds only
   * such projections is one statement and needs no explicit transaction. Release and Cancel drop
   * the function with the tables. The function must apply nothing for a null element: while a
   * version rebuilds, appends call it now and then with `array[null::events]`, so that each
   * connection has compiled and planned it before the flip (migration 005). So that the call does
   * that, a null element takes the path an append's one event takes, to its end, on no row: a
   * path that returned early would leave its statements to be planned by every writer at once,
   * right after the Flip's lock (order_summary's one-event branch does so).
   */
  sqlApply?: boolean;
  /**
   * A `sqlApply` projection's apply as one SQL statement over `source`, a parenthesised query of
   * log rows (any subset, in any order: the statement computes what the function computes over the
   * same rows). Replay runs it over each batch's range of the log, straight from the table: no
   * array of the batch's events is built and unnested, and a batch is no longer bounded by the
   * memory such an array takes, so it can be larger and write each key less often (replay.ts).
   * Optional: without it, replay passes the batch to `<table>_apply(events[])` as an array.
   */
  applyStatement?(table: string, source: string): string;
  /**
   * A `sqlApply` projection's document for an append's one event, computed by the appending
   * process before the insert, when the event's own fields determine it: what `<table>_apply`
   * would compute, without the server computing it. Then `createTable` also creates
   * `<table>_merge(jsonb, events)`, which upserts such a partial (the row it was computed for
   * gives what only the insert knows, its global position), and the append calls it instead of the
   * apply function for the `live` version (migration 010). Undefined when the document needs what
   * only the server knows (for order_summary: the recorded time, or a decision's stream position
   * when no expected version is given): the apply function computes it, as every other path does.
   *
   * Each version's functions are made by the code of the deploy that last ran `createTable` for it
   * (ensureProjection, Start), while a writer of the deploy before may still be appending. So the
   * partial carries `code`, a fingerprint of the code that computed it, and the merge function
   * refuses (returns false) a partial of other code than its own: the apply function computes that
   * event's document instead. A version's documents are therefore computed by one code, whichever
   * side computes them.
   */
  inlinePartial?(event: PendingEvent): (JsonObject & { code: string }) | undefined;
}

/** An event an append is about to insert, as its writer knows it. */
export interface PendingEvent {
  id: string;
  streamId: string;
  type: string;
  data: JsonObject;
  metadata: JsonObject;
  /** Known when the append gives an expected version (it is that plus one); otherwise undefined. */
  streamPosition: number | undefined;
}

/** The function a `sqlApply` projection's version applies with (see `sqlApply`). */
export function applyFunctionFor(table: string): string {
  return `${table}_apply`;
}

/** The function that merges a writer's partial into a version's table (see `inlinePartial`). */
export function mergeFunctionFor(table: string): string {
  return `${table}_merge`;
}

/**
 * `createTable` for each of these versions' tables, then, for a `sqlApply` projection, one rewrite
 * of each of the append's dispatches (`ledgerline_apply_version`, migration 008, and
 * `ledgerline_merge_version`, migration 010), so that they name the versions' new functions in
 * static calls before they can go live. A dispatch that misses a version still applies its events:
 * the apply dispatch through EXECUTE, and the merge dispatch by answering false, after which the
 * append applies instead; the rewrite only saves that. In the caller's transaction: the rewrite
 * commits with the functions it names.
 */
export async function createVersionTables(tx: Tx, definition: ProjectionDefinition, tables: readonly string[]): Promise<void> {
  for (const table of tables) await definition.createTable(tx, table);
  if (definition.sqlApply && tables.length > 0) {
    await tx.query('select ledgerline_refresh_apply_version(), ledgerline_refresh_merge_version()');
  }
}

/**
 * A list of log positions sent as one JSON parameter (the Data API has no array parameters), as the
 * `bigint[]` that `= any (…)` probes the primary key with once per position.
 */
export const POSITIONS_SQL = (param: string) =>
  `(select array_agg(p::bigint) from jsonb_array_elements_text(${param}) as p)::bigint[]`;

/**
 * `apply` of a `sqlApply` projection: the version's function over these events, read back from the
 * log by position (events are immutable), so only their positions travel.
 */
export async function applyInSql(tx: Tx, table: string, events: readonly StoredEvent[]): Promise<void> {
  if (events.length === 0) return;
  await tx.query(
    `select ${ident(applyFunctionFor(table))}(array(
       select e from events as e where e.global_position = any (${POSITIONS_SQL('$1::jsonb')}) order by e.global_position))`,
    [JSON.stringify(events.map((e) => e.globalPosition))],
  );
}

export function tableFor(name: string, version: number): string {
  const table = `${name}_v${version}`;
  ident(table);
  return table;
}

/** Every table a version owns (`tables`, default just `<name>_v<N>`), each name checked. */
export function tablesOf(definition: ProjectionDefinition, version: number): string[] {
  const table = tableFor(definition.name, version);
  const tables = definition.tables?.(table) ?? [table];
  tables.forEach(ident); // throws on a name that is not a safe identifier
  return tables;
}

/** Truncates (in-place rebuild) or drops (release, cancel) every table of a version. */
export async function clearTables(tx: Tx, definition: ProjectionDefinition, version: number, how: 'truncate' | 'drop'): Promise<void> {
  const tables = tablesOf(definition, version).map(ident).join(', ');
  await tx.query(how === 'truncate' ? `truncate ${tables}` : `drop table if exists ${tables}`);
  if (how === 'drop' && definition.sqlApply) {
    const table = tableFor(definition.name, version);
    await tx.query(`drop function if exists ${ident(applyFunctionFor(table))}(events[])`);
    await tx.query(`drop function if exists ${ident(mergeFunctionFor(table))}(jsonb, events)`);
  }
}

export function handles(definition: ProjectionDefinition, type: string): boolean {
  return definition.eventTypes.includes(type);
}

/**
 * The advisory-lock key of a projection, computed in SQL by `projection_lock_key` (migration 003),
 * which the append's own function calls too: every caller (append, rebuild start, flip, cancel)
 * derives the same bigint from one definition.
 */
export const LOCK_KEY_SQL = (param: string) => `projection_lock_key(${param})`;

/**
 * The exclusive side of that lock, held to commit: Start, Flip, Cancel and ensureProjection take it
 * so that no append is between its state read and its commit while they change a version's state.
 * It honours the transaction's lock_timeout (55P03 when it runs out).
 */
export async function lockProjectionExclusive(tx: Tx, name: string): Promise<void> {
  await tx.query(`select pg_advisory_xact_lock(${LOCK_KEY_SQL('$1::text')})`, [name]);
}
