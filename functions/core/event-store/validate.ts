import { PayloadTooLargeError, ValidationError, type ExpectedVersion, type FieldProblem } from '../errors.ts';
import { newEventId } from './event-id.ts';
import { EVENT_TYPE_PATTERN, LIMITS } from './limits.ts';
import type { JsonObject, NewEvent } from './types.ts';

const UUID_PATTERN = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
// C0 and C1 control characters and DEL.
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f-\u009f]/;
// A UTF-16 surrogate without its partner: not representable in UTF-8, so PostgreSQL rejects it.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

export interface ValidatedEvent {
  id: string;
  /** True when the caller chose the id, i.e. a retry of an earlier append is possible. */
  idFromCaller: boolean;
  type: string;
  data: JsonObject;
  metadata: JsonObject;
}

export function streamIdProblem(streamId: unknown): string | undefined {
  if (typeof streamId !== 'string') return 'must be a string';
  if (streamId.length === 0) return 'must not be empty';
  if (streamId.length > LIMITS.streamIdLength) return `must be at most ${LIMITS.streamIdLength} characters`;
  if (CONTROL_CHARACTER.test(streamId)) return 'must not contain control characters';
  if (LONE_SURROGATE.test(streamId)) return 'must be valid Unicode';
  if (streamId.trim() !== streamId) return 'must not start or end with white space';
  // A stream id is a path segment of the HTTP API: a slash would make it unroutable (gateways decode
  // %2F), and "." / ".." are path navigation to every proxy in between.
  if (/[/\\]/.test(streamId)) return 'must not contain "/" or "\\"';
  if (streamId === '.' || streamId === '..') return 'must not be "." or ".."';
  return undefined;
}

export function assertValidStreamId(streamId: unknown): asserts streamId is string {
  const problem = streamIdProblem(streamId);
  if (problem) throw new ValidationError([{ path: 'streamId', message: problem }]);
}

export function assertValidExpectedVersion(value: unknown): asserts value is ExpectedVersion | undefined {
  if (value === undefined || value === 'any') return;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new ValidationError([
      { path: 'expectedVersion', message: 'must be a non-negative integer or "any"' },
    ]);
  }
}

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID_PATTERN.test(value);
}

/**
 * Checks a whole append before anything is written and returns the events normalised (ids
 * lower-cased or generated, metadata defaulted). All problems are reported together.
 */
export function validateNewEvents(events: unknown): ValidatedEvent[] {
  if (!Array.isArray(events)) {
    throw new ValidationError([{ path: 'events', message: 'must be an array of events' }]);
  }
  if (events.length === 0) throw new ValidationError([{ path: 'events', message: 'must not be empty' }]);
  if (events.length > LIMITS.eventsPerAppend) {
    throw new ValidationError([
      { path: 'events', message: `must hold at most ${LIMITS.eventsPerAppend} events, got ${events.length}` },
    ]);
  }

  const problems: FieldProblem[] = [];
  const validated: ValidatedEvent[] = [];
  const ids = new Set<string>();
  let totalBytes = 0;

  events.forEach((raw: unknown, i) => {
    const at = `events[${i}]`;
    if (!isPlainObject(raw)) {
      problems.push({ path: at, message: 'must be an object' });
      return;
    }
    const known = new Set(['id', 'type', 'data', 'metadata']);
    for (const key of Object.keys(raw)) {
      if (!known.has(key)) problems.push({ path: `${at}.${key}`, message: 'is not a known field' });
    }
    const { id, type, data, metadata } = raw as Record<string, unknown>;

    let eventId: string | undefined;
    if (id !== undefined) {
      if (!isUuid(id)) problems.push({ path: `${at}.id`, message: 'must be a UUID' });
      else {
        eventId = id.toLowerCase();
        if (ids.has(eventId)) problems.push({ path: `${at}.id`, message: 'appears twice in this append' });
        ids.add(eventId);
      }
    }

    if (typeof type !== 'string' || type.length === 0) {
      problems.push({ path: `${at}.type`, message: 'must be a non-empty string' });
    } else if (type.length > LIMITS.eventTypeLength) {
      problems.push({ path: `${at}.type`, message: `must be at most ${LIMITS.eventTypeLength} characters` });
    } else if (!EVENT_TYPE_PATTERN.test(type)) {
      problems.push({
        path: `${at}.type`,
        message: 'must start with a letter and hold only letters, digits, "_", ".", ":" or "-"',
      });
    }

    if (!isPlainObject(data)) problems.push({ path: `${at}.data`, message: 'must be a JSON object' });
    else jsonProblems(data, `${at}.data`, 1, problems);

    if (metadata !== undefined) {
      if (!isPlainObject(metadata)) problems.push({ path: `${at}.metadata`, message: 'must be a JSON object' });
      else jsonProblems(metadata, `${at}.metadata`, 1, problems);
    }

    if (problems.length > 0) return;
    const bytes = Buffer.byteLength(JSON.stringify(data)) + Buffer.byteLength(JSON.stringify(metadata ?? {}));
    if (bytes > LIMITS.eventBytes) throw new PayloadTooLargeError(`${at} (data and metadata)`, bytes, LIMITS.eventBytes);
    totalBytes += bytes;
    validated.push({
      id: eventId ?? newEventId(),
      idFromCaller: eventId !== undefined,
      type: type as string,
      data: data as JsonObject,
      metadata: (metadata as JsonObject | undefined) ?? {},
    });
  });

  if (problems.length > 0) throw new ValidationError(problems);
  if (totalBytes > LIMITS.appendBytes) throw new PayloadTooLargeError('the append', totalBytes, LIMITS.appendBytes);
  return validated;
}

export function isPlainObject(value: unknown): value is JsonObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Only what JSON and PostgreSQL's jsonb can hold: no NUL characters, lone surrogates, NaN or Infinity. */
function jsonProblems(value: unknown, path: string, depth: number, problems: FieldProblem[]): void {
  if (problems.length >= 20) return;
  if (depth > LIMITS.jsonDepth) {
    problems.push({ path, message: `nests deeper than ${LIMITS.jsonDepth} levels` });
    return;
  }
  if (value === null || typeof value === 'boolean') return;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) problems.push({ path, message: 'must be a finite number' });
    return;
  }
  if (typeof value === 'string') {
    const problem = stringProblem(value);
    if (problem) problems.push({ path, message: problem });
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((item, i) => jsonProblems(item, `${path}[${i}]`, depth + 1, problems));
    return;
  }
  if (isPlainObject(value)) {
    for (const [key, item] of Object.entries(value)) {
      const problem = stringProblem(key);
      if (problem) problems.push({ path: `${path}.${sanitizeKey(key)}`, message: `key ${problem}` });
      jsonProblems(item, `${path}.${sanitizeKey(key)}`, depth + 1, problems);
    }
    return;
  }
  problems.push({ path, message: 'is not a JSON value' });
}

function stringProblem(s: string): string | undefined {
  if (s.includes('\u0000')) return 'must not contain the NUL character';
  if (LONE_SURROGATE.test(s)) return 'must be valid Unicode';
  return undefined;
}

function sanitizeKey(key: string): string {
  const printable = key.replace(/[^\x20-\x7e]/g, '?');
  return printable.length > 40 ? `${printable.slice(0, 40)}…` : printable;
}
