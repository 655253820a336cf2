/**
 * Input limits of the event store, enforced before anything is written (README "Limits").
 * They are sized for API Gateway and SQS: an SQS message is at most 256 KiB, a Lambda payload 6 MB.
 */
export const LIMITS = {
  /** Characters in a stream id. */
  streamIdLength: 200,
  /** Characters in an event type; types match EVENT_TYPE_PATTERN. */
  eventTypeLength: 100,
  /** Events in one append. */
  eventsPerAppend: 100,
  /** UTF-8 bytes of one event's serialized `data` plus `metadata`. */
  eventBytes: 64 * 1024,
  /** UTF-8 bytes of all events of one append, serialized. */
  appendBytes: 1024 * 1024,
  /** Nesting depth of objects and arrays inside `data` or `metadata`. */
  jsonDepth: 32,
} as const;

export const EVENT_TYPE_PATTERN = /^[A-Za-z][A-Za-z0-9_.:-]*$/;
