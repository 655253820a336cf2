import type { Db } from '../db/types.ts';
import { AppError, DuplicateEventIdError, WrongExpectedVersionError } from '../core/errors.ts';
import { appendToStream } from '../core/event-store/append.ts';
import { eventColumns, toStoredEvent, type StoredEventRow } from '../core/event-store/read.ts';
import type { StoredEvent } from '../core/event-store/types.ts';
import { jsonEqual } from '../core/json-equal.ts';
import type { ProjectionDefinition } from '../core/projections/definition.ts';
import { decisionFor, type DecisionEventType } from './decide.ts';
import { DECISION_TYPES, validateObservation } from './events.ts';

export interface ObservationResult {
  streamVersion: number;
  globalPositions: number[];
  decision?: DecisionEventType;
  /** The observation was already in the store: nothing was written (HTTP 200 rather than 201). */
  duplicate: boolean;
}

/** An order stream holds a few dozen events; refuse to fold an absurd one rather than load it whole. */
const MAX_ORDER_EVENTS = 10_000;

/**
 * The one observation handler behind `POST /orders/{orderId}/observations` and the SQS consumer.
 *
 * In one transaction: fold the order's stream, append the observation and, when the folded state
 * calls for it, the decision (decide.ts), with the version it read as the expected version. Two
 * concurrent observations of one order can therefore never both decide: the second fails its
 * version check and runs again on the new state (bounded retries). A redelivered observation (same
 * id) is found in the fold and answers the original result without deciding again.
 */
export async function handleObservation(
  db: Db,
  orderId: string,
  body: unknown,
  options: { projections?: readonly ProjectionDefinition[]; correlationId?: string; attempts?: number } = {},
): Promise<ObservationResult> {
  const observation = validateObservation(orderId, body);
  const streamId = `order-${orderId}`;
  const attempts = options.attempts ?? 8;
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.transaction(async (tx) => {
        const rows = await tx.query<StoredEventRow>(
          `select ${eventColumns()} from events where stream_id = $1 order by stream_position limit $2`,
          [streamId, MAX_ORDER_EVENTS + 1],
        );
        if (rows.length > MAX_ORDER_EVENTS) {
          throw new AppError('STREAM_TOO_LONG', 'conflict', `order ${orderId} has more than ${MAX_ORDER_EVENTS} events`);
        }
        const before = rows.map(toStoredEvent);
        const earlier = before.find((e) => e.id === observation.id);
        if (earlier) return originalResult(earlier, before, observation);

        const version = before.length === 0 ? 0 : before[before.length - 1]!.streamPosition;
        const asStored: StoredEvent = {
          ...observation,
          metadata: {},
          streamId,
          streamPosition: version + 1,
          globalPosition: Number.MAX_SAFE_INTEGER,
          recordedAt: new Date().toISOString(),
        };
        const decision = decisionFor(orderId, observation.id, before, [...before, asStored]);
        const result = await appendToStream(tx, streamId, decision ? [observation, decision] : [observation], {
          expectedVersion: version,
          ...(options.projections ? { projections: options.projections } : {}),
          ...(options.correlationId ? { correlationId: options.correlationId } : {}),
        });
        return {
          streamVersion: result.streamVersion,
          globalPositions: result.globalPositions,
          ...(decision ? { decision: decision.type as DecisionEventType } : {}),
          duplicate: result.duplicate,
        };
      });
    } catch (error) {
      // Another observation of this order committed first (version moved), or a redelivery of this
      // one did (its derived decision id is taken): fold again.
      const raced = error instanceof WrongExpectedVersionError || error instanceof DuplicateEventIdError;
      if (!raced || attempt >= attempts) throw error;
    }
  }
}

function originalResult(earlier: StoredEvent, stream: readonly StoredEvent[], observation: { type: string; data: unknown }): ObservationResult {
  if (earlier.type !== observation.type || !jsonEqual(earlier.data, observation.data)) {
    throw new DuplicateEventIdError([earlier.id], 'this observation id was already used for different content');
  }
  const decision = stream.find(
    (e) => (DECISION_TYPES as readonly string[]).includes(e.type) && e.metadata.causationId === earlier.id,
  );
  const appended = decision ? [earlier, decision] : [earlier];
  return {
    streamVersion: Math.max(...appended.map((e) => e.streamPosition)),
    globalPositions: appended.map((e) => e.globalPosition),
    ...(decision ? { decision: decision.type as DecisionEventType } : {}),
    duplicate: true,
  };
}
