import { createHash } from 'node:crypto';
import type { Queryable, Tx } from '../db/types.ts';
import type { JsonObject, StoredEvent } from '../core/event-store/types.ts';
import { applyFunctionFor, applyInSql, mergeFunctionFor, type PendingEvent, type ProjectionDefinition } from '../core/projections/definition.ts';
import { ident } from '../core/sql-ident.ts';
import { sourceTime } from './source-time.ts';

/**
 * The `order_summary` inline projection (API.md): one document per order stream `order-{orderId}`.
 *
 * Each observed section (customer, inventory, payment, shipping, loyalty) keeps the observation
 * with the newest source time `occurredAt`; ties go to the larger event id. The decision section
 * keeps the latest decision in the stream (a correction supersedes the one before it). Each merge is
 * a max over a total order, so the document depends only on the events, never on the order they are
 * applied in (inline, replay, drain, or a late-arriving observation). `eventsApplied` counts events
 * applied, so an event applied twice, or lost, shows up against the stream's length.
 */
export const ORDER_SECTIONS = {
  OrderCreated: 'customer',
  InventoryReserved: 'inventory',
  PaymentProcessed: 'payment',
  ShippingCalculated: 'shipping',
  LoyaltyPointsUpdated: 'loyalty',
  OrderConfirmed: 'decision',
  OrderRejected: 'decision',
  // A correction to "no decision": a newer payment succeeded after a rejection, inventory pending.
  OrderDecisionWithdrawn: 'decision',
} as const;

export type OrderEventType = keyof typeof ORDER_SECTIONS;
export type SectionName = (typeof ORDER_SECTIONS)[OrderEventType];
export const OBSERVED_SECTIONS = ['customer', 'inventory', 'payment', 'shipping', 'loyalty'] as const;

export interface Section {
  /** The source's own time, normalised to ISO-8601 UTC with milliseconds (sorts as text). */
  at: string;
  eventId: string;
  type: string;
  data: JsonObject;
  /**
   * What "newest" means, compared as text in byte order. Observations: source time, then event id.
   * Decisions: their stream position, because a decision is made on the write side against the
   * stream version, and a correction supersedes the decision before it in the stream whatever the
   * source times involved.
   */
  order: string;
}

export interface OrderSummaryRow {
  order_id: string;
  sections: Partial<Record<SectionName, Section>>;
  events_applied: number;
  last_global_position: number;
}

export function orderIdOf(streamId: string): string | undefined {
  return streamId.startsWith('order-') && streamId.length > 6 ? streamId.slice(6) : undefined;
}

/**
 * The section an event type feeds, if any. Own keys only: a type named like an inherited property
 * (`toString`, `__proto__`) feeds none, as in the SQL, which joins on the listed types.
 */
function sectionNameOf(type: string): SectionName | undefined {
  return Object.hasOwn(ORDER_SECTIONS, type) ? ORDER_SECTIONS[type as OrderEventType] : undefined;
}

export function sectionOf(event: StoredEvent): [SectionName, Section] | undefined {
  const name = sectionNameOf(event.type);
  if (!name) return undefined;
  return [name, sectionAt(event, name, sourceTime(event.data.occurredAt) ?? sourceTime(event.recordedAt) ?? '')];
}

/** An event's section, given its name and its time (sectionOf; orderSummaryPartial knows the time). */
function sectionAt(event: Pick<StoredEvent, 'id' | 'type' | 'data' | 'streamPosition'>, name: SectionName, at: string): Section {
  const { orderId: _orderId, occurredAt: _occurredAt, ...data } = event.data;
  const order = name === 'decision' ? `p${String(event.streamPosition).padStart(15, '0')}` : `${at}|${event.id}`;
  return { at, eventId: event.id, type: event.type, data, order };
}

/** The newer of two sections by their `order` key (byte order, as the SQL merge compares it). */
export function newer(a: Section | undefined, b: Section | undefined): Section | undefined {
  if (!a) return b;
  if (!b) return a;
  return a.order >= b.order ? a : b;
}

/** The columns of a version's table (the bench's baselines create theirs with the same). */
export const ORDER_SUMMARY_COLUMNS = `
  order_id             text primary key,
  sections             jsonb       not null default '{}'::jsonb,
  events_applied       integer     not null default 0,
  last_global_position bigint      not null default 0,
  updated_at           timestamptz not null default now()`;

/**
 * The merge of a partial document into a row, for `on conflict (order_id) do update set …` with the
 * row as `cur` (the bench's baselines run the same). Only the incoming sections are looked at: each
 * replaces the stored one when there is none or it is newer (byte order, "C", as in JS, whatever the
 * database's collation; a tie keeps the stored one, as newer() does).
 */
export const ORDER_SUMMARY_MERGE = `
  sections = cur.sections || coalesce((
    select jsonb_object_agg(k, v)
      from jsonb_each(excluded.sections) as e(k, v)
     where cur.sections->k is null or v->>'order' collate "C" > cur.sections->k->>'order' collate "C"), '{}'::jsonb),
  events_applied = cur.events_applied + excluded.events_applied,
  last_global_position = greatest(cur.last_global_position, excluded.last_global_position),
  updated_at = now()`;

/**
 * One section's SQL, shared by the apply function's one-event branch and the batch statement so
 * that both build the same document (the projection tests compare it with sectionOf() and
 * newer()). Arguments are SQL expressions. The source time, else the recorded time, as ISO text.
 */
const sourceTimeSql = (occurredAt: string, recordedAt: string) =>
  `coalesce(ledgerline_source_time(${occurredAt}),
            to_char(${recordedAt} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))`;
/** The section's order key (Section.order): a decision's stream position, else time and event id. */
const orderKeySql = (section: string, at: string, streamPosition: string, eventId: string) =>
  `case when ${section} = 'decision' then 'p' || lpad(${streamPosition}::text, 15, '0')
        else ${at} || '|' || ${eventId}::text end`;
/** The section's document (Section). */
const sectionDocSql = (f: { at: string; eventId: string; type: string; data: string; order: string }) =>
  `jsonb_build_object('at', ${f.at}, 'eventId', ${f.eventId}::text, 'type', ${f.type},
                      'data', ${f.data} - 'orderId' - 'occurredAt', 'order', ${f.order})`;

/**
 * The order summary's apply, in SQL: the function `<table>_apply(events[])` applies those events to
 * the version's table. Every path calls it: the append inside its own statement, with the rows its
 * insert returned (migration 004, step 7); drain and flip through `apply` (applyInSql), with the
 * rows read by position. Replay runs its batch statement (below) itself, as `applyStatement`, over
 * each batch's range of the log (rebuild/replay.ts). It computes what sectionOf() and newer()
 * compute (the tests check the documents against them): per order and section the newest event by
 * its order key, the events counted and the last position, then one upsert merges each order's
 * partial document into its row (an upsert cannot touch a row twice). It reads no table but its
 * own: the events come as values, so an append does not read back the row it has just written to
 * the log's hottest page.
 * plpgsql, so its plan is cached per connection (a LANGUAGE sql function with an INSERT is planned
 * on every call before PostgreSQL 18).
 */
function applyFunctionSql(table: string): string {
  const sectionOfType = Object.entries(ORDER_SECTIONS)
    .map(([type, section]) => `when '${type}' then '${section}'`)
    .join(' ');
  return `create or replace function ${ident(applyFunctionFor(table))}(p_events events[]) returns void
    language plpgsql volatile as $apply$
    declare
      v_event   events;
      v_section text;
      v_at      text;
    begin
      if cardinality(p_events) = 1 then
        -- An append's one event: its document is the partial, no grouping to do. The same rows and
        -- document as the statement below, computed in plpgsql expressions (each a cached simple
        -- expression) and upserted by a statement that only merges: the statement's subqueries cost
        -- more to start than to run for one row (a throwaway timing, about 90 against 140 µs).
        -- A null element (see sqlApply) has no type, so no section, and the insert writes nothing.
        -- It still runs every expression and the insert, on no row: that null call is how appends
        -- have this branch planned in their connection before a Flip (migration 005); returning
        -- early would leave every writer to plan it at once, right after the Flip's lock.
        v_event := p_events[1];
        v_section := case v_event.type ${sectionOfType} end;
        v_at := ${sourceTimeSql("v_event.data->>'occurredAt'", 'v_event.recorded_at')};
        insert into ${ident(table)} as cur (order_id, sections, events_applied, last_global_position)
        select substr(v_event.stream_id, 7),
               jsonb_build_object(v_section, ${sectionDocSql({
                 at: 'v_at',
                 eventId: 'v_event.event_id',
                 type: 'v_event.type',
                 data: 'v_event.data',
                 order: orderKeySql('v_section', 'v_at', 'v_event.stream_position', 'v_event.event_id'),
               })}),
               1, v_event.global_position
         where v_section is not null and v_event.stream_id like 'order-_%'
        on conflict (order_id) do update set ${ORDER_SUMMARY_MERGE};
      else
        ${orderSummaryApplyStatement(table, 'unnest(p_events)')};
      end if;
    end
    $apply$`;
}

/**
 * The apply's statement over any source of log rows (the function's array; replay's batch range,
 * as `applyStatement`; the bench's lower bound runs it over the whole log at once). Each level is
 * fenced with OFFSET 0 so that what it computes is computed once per event: flattened, the source
 * time was evaluated four times per event (in the sort key, the order key and the document), and
 * every document was built before the winners were known. Here the order key is computed once,
 * the winner per order and section is picked on it, and only winners' documents are built. (The
 * function's one-event branch computes the same rows and document in plpgsql, from the same SQL
 * pieces.)
 */
export function orderSummaryApplyStatement(table: string, source: string): string {
  const sections = Object.entries(ORDER_SECTIONS)
    .map(([type, section]) => `('${type}', '${section}')`)
    .join(', ');
  // Per event: order, section, source time (else recorded time) and order key, each computed once.
  const keyed = `(
              select a.*, ${orderKeySql('a.section', 'a.at', 'a.stream_position', 'a.event_id')} as ord
                from (
                  select o.*, ${sourceTimeSql('o.occurred_at', 'o.recorded_at')} as at
                    from (
                      select substr(e.stream_id, 7) as order_id, s.section, e.global_position, e.stream_position,
                             e.event_id, e.type, e.data, e.recorded_at, e.data->>'occurredAt' as occurred_at
                        from ${source} as e
                        join (values ${sections}) as s(type, section) on s.type = e.type
                       where e.stream_id like 'order-_%'
                      offset 0
                    ) as o
                  offset 0
                ) as a
              offset 0
            ) as k`;
  const insert = `insert into ${ident(table)} as cur (order_id, sections, events_applied, last_global_position)`;
  const merge = `on conflict (order_id) do update set ${ORDER_SUMMARY_MERGE}`;
  return `${insert}
      select w.order_id,
             coalesce(jsonb_object_agg(w.section, ${sectionDocSql({ at: 'w.at', eventId: 'w.event_id', type: 'w.type', data: 'w.data', order: 'w.ord' })})
                      filter (where w.newest), '{}'::jsonb),
             count(*)::int, max(w.global_position)
        from (
          select k.*, row_number() over (partition by k.order_id, k.section order by k.ord collate "C" desc, k.global_position) = 1 as newest
            from ${keyed}
        ) as w
       group by w.order_id
      ${merge}`;
}

/**
 * Bump when sectionOf(), newer(), sourceTime() or orderSummaryPartial() change what they compute
 * without the SQL changing (a fix to the JS twin alone). Part of ORDER_SUMMARY_CODE.
 */
const JS_REVISION = 1;

/**
 * The fingerprint of the code that computes this projection's documents (ProjectionDefinition's
 * `inlinePartial`): the SQL that `createTable` makes (the apply function, which the tests hold to
 * the JS twin, and the merge function, which reads the partial) and the JS twin's revision. A
 * writer's partial carries it, and a version's merge function merges only a partial of its own
 * code. Computed from text, not from Function.toString(), which differs between bundles of the same
 * source.
 */
export const ORDER_SUMMARY_CODE = createHash('sha256')
  .update(`${JS_REVISION}\n${applyFunctionSql('t')}\n${mergeFunctionSql('t', '')}`)
  .digest('hex')
  .slice(0, 16);

/**
 * `<table>_merge(jsonb, events)`: upserts a writer's partial (inlinePartial below), computed for the
 * event `p_event` before its insert, with the global position the insert gave it, and returns true;
 * returns false, writing nothing, for a partial of other code than this one's or of another order,
 * and the append then calls `<table>_apply` for the event. A null partial runs the insert on no
 * row and returns false: that is how appends have it planned in their connection before a Flip
 * (step 9b, migrations 005 and 010), as the apply function's null element does. The checks are the
 * insert's own condition, and FOUND its answer: one statement where an IF and a RETURN expression
 * came before, which plpgsql sets up again in every append's transaction (throwaway counts by
 * scenario 5's method, with migration 017: 801,211 instructions per append with the IF, 793,445
 * without).
 */
function mergeFunctionSql(table: string, code: string): string {
  return `create or replace function ${ident(mergeFunctionFor(table))}(p_partial jsonb, p_event events) returns boolean
    language plpgsql volatile as $merge$
    begin
      insert into ${ident(table)} as cur (order_id, sections, events_applied, last_global_position)
      select p_partial->>'orderId', p_partial->'sections', 1, p_event.global_position
       where p_partial->>'code' = '${code}' and p_event.stream_id = 'order-' || (p_partial->>'orderId')
      on conflict (order_id) do update set ${ORDER_SUMMARY_MERGE};
      return found;
    end
    $merge$`;
}

/**
 * The document `<table>_apply` computes for one event, when the event's own fields determine it (see
 * ProjectionDefinition's `inlinePartial`): an order stream's event with a valid source time, and
 * for a decision, a known stream position. Otherwise undefined: the section's time would be the
 * recorded time, or its order key the stream position, which only the insert knows.
 */
function orderSummaryPartial(event: PendingEvent): (JsonObject & { code: string }) | undefined {
  const orderId = orderIdOf(event.streamId);
  const name = sectionNameOf(event.type);
  const at = sourceTime(event.data.occurredAt);
  if (orderId === undefined || name === undefined || at === undefined) return undefined;
  if (name === 'decision' && event.streamPosition === undefined) return undefined;
  return { code: ORDER_SUMMARY_CODE, orderId, sections: { [name]: sectionAt({ ...event, streamPosition: event.streamPosition ?? 0 }, name, at) } };
}

export const orderSummary: ProjectionDefinition = {
  name: 'order_summary',
  kind: 'inline',
  eventTypes: Object.keys(ORDER_SECTIONS),
  sqlApply: true,
  applyStatement: orderSummaryApplyStatement,

  async createTable(tx: Tx, table: string) {
    await tx.query(`create table if not exists ${ident(table)} (${ORDER_SUMMARY_COLUMNS})`);
    await tx.query(applyFunctionSql(table));
    await tx.query(mergeFunctionSql(table, ORDER_SUMMARY_CODE));
  },

  apply: applyInSql,
  inlinePartial: orderSummaryPartial,
};

export interface OrderSummaryDocument {
  orderId: string;
  status: 'pending' | 'confirmed' | 'rejected';
  customer: JsonObject | null;
  payment: JsonObject | null;
  inventory: JsonObject | null;
  shipping: JsonObject | null;
  loyalty: JsonObject | null;
  completeness: { received: string[]; missing: string[]; complete: boolean };
  decision: { type: string; at: string; data: JsonObject } | null;
  eventsApplied: number;
  lastGlobalPosition: number;
}

export function toOrderSummaryDocument(row: OrderSummaryRow): OrderSummaryDocument {
  const s = row.sections;
  const data = (name: SectionName) => (s[name] ? { ...s[name].data, occurredAt: s[name].at } : null);
  const received = OBSERVED_SECTIONS.filter((name) => s[name]);
  const decision = s.decision?.type === 'OrderDecisionWithdrawn' ? undefined : s.decision;
  return {
    orderId: row.order_id,
    status: decision?.type === 'OrderConfirmed' ? 'confirmed' : decision?.type === 'OrderRejected' ? 'rejected' : 'pending',
    customer: data('customer'),
    payment: data('payment'),
    inventory: data('inventory'),
    shipping: data('shipping'),
    loyalty: data('loyalty'),
    completeness: {
      received: [...received],
      missing: OBSERVED_SECTIONS.filter((name) => !s[name]),
      complete: received.length === OBSERVED_SECTIONS.length,
    },
    decision: decision ? { type: decision.type, at: decision.at, data: decision.data } : null,
    eventsApplied: row.events_applied,
    lastGlobalPosition: row.last_global_position,
  };
}

export async function readOrderSummaryRows(q: Queryable, table: string): Promise<OrderSummaryRow[]> {
  return q.query<OrderSummaryRow>(
    `select order_id, sections, events_applied, last_global_position from ${ident(table)} order by order_id`,
  );
}
