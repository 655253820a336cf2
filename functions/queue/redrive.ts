import { DeleteMessageCommand, ReceiveMessageCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';

export interface RedriveResult {
  moved: number;
  /** With dryRun: the bodies that would move, untouched on the DLQ. */
  preview: string[];
}

/**
 * Moves messages from a dead-letter queue back to the queue they came from, after a fix. Each
 * message is sent to the target before it is deleted from the DLQ: a crash in between duplicates a
 * message, never loses one (the consumers are idempotent). A dry run reads without deleting; the
 * messages become visible again after the DLQ's visibility timeout.
 */
export async function redrive(
  sqs: SQSClient,
  options: { dlqUrl: string; targetUrl: string; max?: number; dryRun?: boolean; visibilityTimeoutSeconds?: number },
): Promise<RedriveResult> {
  const max = options.max ?? 1_000;
  const result: RedriveResult = { moved: 0, preview: [] };
  const seen = new Set<string>();
  while (result.moved + result.preview.length < max) {
    const received = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: options.dlqUrl,
        MaxNumberOfMessages: Math.min(10, max - result.moved - result.preview.length),
        WaitTimeSeconds: 1,
        VisibilityTimeout: options.visibilityTimeoutSeconds ?? 30,
      }),
    );
    // A dry run sees its own messages again once their visibility lapses: stop at the first repeat.
    const messages = (received.Messages ?? []).filter((m) => !seen.has(m.MessageId ?? ''));
    if (messages.length === 0) break;
    for (const m of messages) {
      seen.add(m.MessageId ?? '');
      if (options.dryRun) {
        result.preview.push(m.Body ?? '');
        continue;
      }
      await sqs.send(new SendMessageCommand({ QueueUrl: options.targetUrl, MessageBody: m.Body ?? '' }));
      await sqs.send(new DeleteMessageCommand({ QueueUrl: options.dlqUrl, ReceiptHandle: m.ReceiptHandle! }));
      result.moved += 1;
    }
  }
  return result;
}
