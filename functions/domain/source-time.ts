/**
 * The source's own time of an observation (`data.occurredAt`), normalised to UTC
 * `YYYY-MM-DDTHH:MM:SS.mmmZ`, or undefined when the value does not count as one.
 *
 * The twin of `ledgerline_source_time` (migrations/004_inline_sql_apply.sql; 006 checks its common
 * case more cheaply), which the order_summary projection computes its documents with; the edge
 * validates with this one and the write side decides with it, so a time either side accepts is
 * read the same by both (test/int/source-time.int.test.ts). The rule, stricter than Date.parse
 * (which takes February 30th as March 2nd): ISO-8601 with seconds and a time zone at most 14 hours
 * off UTC, years 1000–9998, a date that exists, no hour 24 and no second 60, read to the
 * millisecond with further digits truncated.
 */
export const SOURCE_TIME_PATTERN =
  /^(?!9999)[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-](0\d|1[0-4]):[0-5]\d)$/;

export function sourceTime(value: unknown): string | undefined {
  if (typeof value !== 'string' || !SOURCE_TIME_PATTERN.test(value)) return undefined;
  const [y, m, d] = value.slice(0, 10).split('-').map(Number) as [number, number, number];
  if (new Date(Date.UTC(y, m - 1, d)).getUTCDate() !== d) return undefined;
  const ms = Date.parse(value.replace(/(\.\d{3})\d+/, '$1'));
  return Number.isNaN(ms) ? undefined : new Date(ms).toISOString();
}
