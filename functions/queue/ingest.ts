import type { SQSBatchResponse, SQSEvent, SQSRecord } from 'aws-lambda';
import type { Db } from '../db/types.ts';
import { AppError, ValidationError } from '../core/errors.ts';
import type { Log } from '../core/log.ts';
import type { ProjectionDefinition } from '../core/projections/definition.ts';
import { handleObservation } from '../domain/observe.ts';

export interface IngestDeps {
  db: Db;
  projections: readonly ProjectionDefinition[];
  log: Log;
}

/**
 * The SQS consumer of observations (the same body as `POST /orders/{orderId}/observations`; the order
 * id is the observation's `data.orderId`). Records are handled one by one and each failure is
 * reported alone (`batchItemFailures`, with ReportBatchItemFailures on the event source mapping), so
 * one bad record never fails or replays the batch; the record's message id is the correlation id.
 *
 * An invalid record is not retryable: it is reported failed, becomes visible again only after the
 * queue's visibility timeout (no retry storm), and the queue's redrive policy moves it to the DLQ
 * after `maxReceiveCount` receives. Its reason is logged each time. A duplicate delivery is a
 * success (the store answers the original result) and is deleted.
 */
export function createIngestHandler(deps: IngestDeps): (event: SQSEvent) => Promise<SQSBatchResponse> {
  return async (event) => {
    const batchItemFailures: SQSBatchResponse['batchItemFailures'] = [];
    for (const record of event.Records) {
      const failure = await handleRecord(deps, record);
      if (failure) batchItemFailures.push({ itemIdentifier: record.messageId });
    }
    return { batchItemFailures };
  };
}

async function handleRecord(deps: IngestDeps, record: SQSRecord): Promise<boolean> {
  const context = {
    messageId: record.messageId,
    receiveCount: Number(record.attributes?.ApproximateReceiveCount ?? 1),
  };
  let body: unknown;
  try {
    body = JSON.parse(record.body);
  } catch {
    deps.log.warn('observation rejected', { ...context, code: 'VALIDATION_FAILED', reason: 'the body is not JSON' });
    return true;
  }
  const orderId = (body as { data?: { orderId?: unknown } } | null)?.data?.orderId;
  try {
    const result = await handleObservation(deps.db, typeof orderId === 'string' ? orderId : '', body, {
      projections: deps.projections,
      correlationId: record.messageId,
    });
    deps.log.info('observation stored', {
      ...context,
      orderId,
      type: (body as { type?: unknown }).type,
      duplicate: result.duplicate,
      decision: result.decision ?? null,
      globalPositions: result.globalPositions,
    });
    return false;
  } catch (error) {
    if (error instanceof ValidationError) {
      deps.log.warn('observation rejected', { ...context, orderId, code: error.code, reason: error.problems });
    } else if (error instanceof AppError && error.category !== 'unavailable' && error.category !== 'internal') {
      deps.log.warn('observation rejected', { ...context, orderId, code: error.code, reason: error.message });
    } else {
      // A database outage or a bug: retried by SQS; the details stay in the log.
      deps.log.error('observation failed', { ...context, orderId, error: error instanceof Error ? error.message : String(error) });
    }
    return true;
  }
}
