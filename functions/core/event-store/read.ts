import type { Queryable } from '../../db/types.ts';
import { StreamNotFoundError, ValidationError } from '../errors.ts';
import type { JsonObject, StoredEvent } from './types.ts';
import { assertValidStreamId } from './validate.ts';

export const MAX_READ_LIMIT = 1000;

export interface StoredEventRow {
  event_id: string;
  stream_id: string;
  stream_position: number;
  global_position: number;
  type: string;
  data: JsonObject;
  metadata: JsonObject;
  recorded_at: string;
}

/** The columns every reader selects, optionally qualified by a table alias; `toStoredEvent` maps them. */
export function eventColumns(alias?: string): string {
  const c = alias ? `${alias}.` : '';
  return `${c}event_id::text as event_id, ${c}stream_id, ${c}stream_position, ${c}global_position, ${c}type,
  ${c}data, ${c}metadata, to_char(${c}recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as recorded_at`;
}

export const EVENT_COLUMNS = eventColumns();

export function toStoredEvent(row: StoredEventRow): StoredEvent {
  return {
    id: row.event_id,
    streamId: row.stream_id,
    streamPosition: row.stream_position,
    globalPosition: row.global_position,
    type: row.type,
    data: row.data,
    metadata: row.metadata,
    recordedAt: row.recorded_at,
  };
}

export interface ReadStreamResult {
  streamId: string;
  version: number;
  events: StoredEvent[];
}

/** Events of one stream from `fromVersion` (a stream position, 1-based) on, at most `limit` of them. */
export async function readStream(
  q: Queryable,
  streamId: string,
  options: { fromVersion?: number; limit?: number } = {},
): Promise<ReadStreamResult> {
  assertValidStreamId(streamId);
  const fromVersion = options.fromVersion ?? 1;
  const limit = options.limit ?? 100;
  assertReadBounds({ fromVersion, limit });
  const rows = await q.query<StoredEventRow & { version: number }>(
    `select s.version, e.*
       from streams s
       left join lateral (
         select ${EVENT_COLUMNS}
           from events
          where stream_id = s.stream_id and stream_position >= $2
          order by stream_position
          limit $3
       ) e on true
      where s.stream_id = $1 and s.version > 0
      order by e.stream_position`,
    [streamId, fromVersion, limit],
  );
  const first = rows[0];
  if (!first) throw new StreamNotFoundError(streamId);
  return {
    streamId,
    version: first.version,
    events: rows.filter((r) => r.event_id !== null).map(toStoredEvent),
  };
}

/**
 * Events after a global position, in position order. This is a plain read of what is committed now:
 * a position whose transaction commits later can appear *behind* what it returns. Consumers that
 * must not miss such events use the async projector's gap-aware checkpoint, not this.
 */
export async function readAll(q: Queryable, afterPosition: number, limit = 100): Promise<StoredEvent[]> {
  if (!Number.isSafeInteger(afterPosition) || afterPosition < 0) {
    throw new ValidationError([{ path: 'afterPosition', message: 'must be a non-negative integer' }]);
  }
  assertReadBounds({ limit });
  const rows = await q.query<StoredEventRow>(
    `select ${EVENT_COLUMNS} from events where global_position > $1 order by global_position limit $2`,
    [afterPosition, limit],
  );
  return rows.map(toStoredEvent);
}

function assertReadBounds(o: { fromVersion?: number; limit: number }): void {
  const problems = [];
  if (o.fromVersion !== undefined && (!Number.isSafeInteger(o.fromVersion) || o.fromVersion < 1)) {
    problems.push({ path: 'fromVersion', message: 'must be an integer of at least 1' });
  }
  if (!Number.isSafeInteger(o.limit) || o.limit < 1 || o.limit > MAX_READ_LIMIT) {
    problems.push({ path: 'limit', message: `must be an integer from 1 to ${MAX_READ_LIMIT}` });
  }
  if (problems.length > 0) throw new ValidationError(problems);
}
