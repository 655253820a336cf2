import { CreateQueueCommand, GetQueueAttributesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { mkdirSync } from 'node:fs';
import { startFauxqs } from 'fauxqs';

export interface LocalSqs {
  endpoint: string;
  sqs: SQSClient;
  /** Creates (or finds) a queue and returns its URL and ARN. */
  queue(name: string, attributes?: Record<string, string>): Promise<{ url: string; arn: string }>;
  /** A queue with a dead-letter queue `<name>-dlq` after `maxReceiveCount` receives. */
  queueWithDlq(name: string, maxReceiveCount: number, attributes?: Record<string, string>): Promise<{ url: string; arn: string; dlqUrl: string }>;
  stop(): Promise<void>;
}

/** SQS on loopback (fauxqs, the real SQS JSON protocol) and a client for it: the local stack's and the tests'. */
export async function startLocalSqs(port = 0, dataDir?: string): Promise<LocalSqs> {
  if (dataDir) mkdirSync(dataDir, { recursive: true });
  const server = await startFauxqs({ port, host: '127.0.0.1', logger: false, ...(dataDir ? { dataDir } : {}) });
  const endpoint = `http://127.0.0.1:${server.port}`;
  const sqs = new SQSClient({ endpoint, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
  const queue = async (name: string, attributes: Record<string, string> = {}) => {
    const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName: name, Attributes: attributes }));
    const arn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
    return { url: QueueUrl!, arn };
  };
  return {
    endpoint,
    sqs,
    queue,
    async queueWithDlq(name, maxReceiveCount, attributes = {}) {
      const dlq = await queue(`${name}-dlq`, { MessageRetentionPeriod: '1209600' });
      const main = await queue(name, { ...attributes, RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlq.arn, maxReceiveCount: String(maxReceiveCount) }) });
      return { ...main, dlqUrl: dlq.url };
    },
    async stop() {
      sqs.destroy();
      await server.stop();
    },
  };
}
