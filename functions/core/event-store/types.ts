import type { ExpectedVersion } from '../errors.ts';
import type { ProjectionDefinition } from '../projections/definition.ts';

export type JsonObject = { [key: string]: unknown };

/** An event as a caller proposes it. */
export interface NewEvent {
  /** The event id; generated when omitted. A retry with the same id is idempotent. */
  id?: string;
  type: string;
  data: JsonObject;
  metadata?: JsonObject;
}

/** An event as it is stored. */
export interface StoredEvent {
  id: string;
  streamId: string;
  streamPosition: number;
  globalPosition: number;
  type: string;
  data: JsonObject;
  metadata: JsonObject;
  recordedAt: string;
}

export interface AppendOptions {
  /** The stream's version the caller based its decision on; `'any'` (the default) skips the check. */
  expectedVersion?: ExpectedVersion;
  /** Stored in every event's metadata unless the event carries its own. Generated when absent. */
  correlationId?: string;
  causationId?: string;
  /**
   * The inline projections registered with the store. Those that handle any of these events are
   * applied in this transaction (or get skip rows while rebuilding). Pass the same list everywhere.
   */
  projections?: readonly ProjectionDefinition[];
}

export interface AppendResult {
  streamId: string;
  /** The stream's version after this append: the stream position of its last event. */
  streamVersion: number;
  globalPositions: number[];
  /** True when every event id had already been appended with the same content: nothing was written. */
  duplicate: boolean;
}
