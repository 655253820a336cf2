import {
  DeleteMessageBatchCommand,
  ReceiveMessageCommand,
  type Message,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';

export interface PollerOptions {
  sqs: SQSClient;
  queueUrl: string;
  queueArn: string;
  handler: (event: SQSEvent) => Promise<SQSBatchResponse>;
  batchSize?: number;
  waitTimeSeconds?: number;
  region?: string;
  onError?: (error: unknown) => void;
}

/**
 * Feeds a Lambda SQS handler from a real SQS endpoint the way the event source mapping does (with
 * ReportBatchItemFailures): receive up to a batch, hand it over as an SQSEvent, delete the records
 * that did not fail. Failed records stay on the queue and come back after the visibility timeout;
 * the queue's redrive policy moves them to the DLQ after maxReceiveCount. Used by `npm start` and the
 * tests (against fauxqs), so the local path is the deployed one.
 */
export function startSqsPoller(options: PollerOptions): { stop(): Promise<void>; pollOnce(): Promise<number> } {
  let running = true;
  const pollOnce = async (): Promise<number> => {
    const received = await options.sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: options.queueUrl,
        MaxNumberOfMessages: options.batchSize ?? 10,
        WaitTimeSeconds: options.waitTimeSeconds ?? 1,
        MessageSystemAttributeNames: ['All'],
        MessageAttributeNames: ['All'],
      }),
    );
    const messages = received.Messages ?? [];
    if (messages.length === 0) return 0;
    const result = await options.handler(toEvent(messages, options));
    const failed = new Set(result.batchItemFailures.map((f) => f.itemIdentifier));
    const done = messages.filter((m) => !failed.has(m.MessageId!));
    if (done.length > 0) {
      await options.sqs.send(
        new DeleteMessageBatchCommand({
          QueueUrl: options.queueUrl,
          Entries: done.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle! })),
        }),
      );
    }
    return messages.length;
  };
  const loop = (async () => {
    while (running) {
      try {
        await pollOnce();
      } catch (error) {
        options.onError?.(error);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  })();
  return {
    pollOnce,
    async stop() {
      running = false;
      await loop;
    },
  };
}

function toEvent(messages: Message[], options: PollerOptions): SQSEvent {
  return {
    Records: messages.map((m) => ({
      messageId: m.MessageId!,
      receiptHandle: m.ReceiptHandle!,
      body: m.Body ?? '',
      attributes: {
        ApproximateReceiveCount: m.Attributes?.ApproximateReceiveCount ?? '1',
        SentTimestamp: m.Attributes?.SentTimestamp ?? String(Date.now()),
        SenderId: m.Attributes?.SenderId ?? 'local',
        ApproximateFirstReceiveTimestamp: m.Attributes?.ApproximateFirstReceiveTimestamp ?? String(Date.now()),
      },
      messageAttributes: {},
      md5OfBody: m.MD5OfBody ?? '',
      eventSource: 'aws:sqs',
      eventSourceARN: options.queueArn,
      awsRegion: options.region ?? 'us-east-1',
    })),
  };
}
