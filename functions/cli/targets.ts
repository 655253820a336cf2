import { createHash, createHmac } from 'node:crypto';
import { CloudFormationClient, DescribeStacksCommand } from '@aws-sdk/client-cloudformation';
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import {
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import { SignatureV4 } from '@smithy/signature-v4';
import { redrive, type RedriveResult } from '../queue/redrive.ts';

export type DlqName = 'ingest' | 'failures';
export interface ApiReply {
  status: number;
  body: any;
}
export interface DeadLetter {
  messageId: string;
  receiveCount: number;
  body: string;
}

/** Where the CLI acts: the local stack, or a deployed stack found by its CloudFormation outputs. */
export interface Target {
  describe: string;
  api(method: string, path: string, body?: unknown): Promise<ApiReply>;
  depth(name: DlqName): Promise<{ visible: number; inFlight: number; url: string }>;
  /** Reads up to `max` messages without consuming them (they are hidden for one second). */
  inspect(name: DlqName, max: number): Promise<DeadLetter[]>;
  /** Ingest DLQ: back to the ingest queue. */
  redriveIngest(options: { dryRun: boolean; max: number }): Promise<RedriveResult>;
  /** Reads failure messages one at a time; `handle` returns true to delete the message. */
  eachFailure(max: number, handle: (body: any) => Promise<boolean>): Promise<number>;
}

export function localTarget(apiBase: string, sqsEndpoint: string): Target {
  const sqs = new SQSClient({ endpoint: sqsEndpoint, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
  const names: Record<DlqName | 'ingest-queue', string> = { ingest: 'ledgerline-ingest-dlq', failures: 'ledgerline-failures', 'ingest-queue': 'ledgerline-ingest' };
  const urlOf = async (name: keyof typeof names) => (await sqs.send(new GetQueueUrlCommand({ QueueName: names[name] }))).QueueUrl!;
  return sqsTarget(`local stack (${apiBase}, SQS ${sqsEndpoint})`, sqs, urlOf, (method, path, body) => plainFetch(apiBase, method, path, body), async (options) =>
    redrive(sqs, { dlqUrl: await urlOf('ingest'), targetUrl: await urlOf('ingest-queue'), dryRun: options.dryRun, max: options.max, visibilityTimeoutSeconds: 1 }),
  );
}

export async function awsTarget(stackName: string): Promise<Target> {
  const cfn = new CloudFormationClient({});
  const stack = (await cfn.send(new DescribeStacksCommand({ StackName: stackName }))).Stacks?.[0];
  const outputs = Object.fromEntries((stack?.Outputs ?? []).map((o) => [o.OutputKey, o.OutputValue]));
  for (const key of ['ApiUrl', 'IngestQueueUrl', 'IngestDlqUrl', 'FailuresDlqUrl', 'RedriveFunctionName']) {
    if (!outputs[key]) throw new Error(`stack ${stackName} has no output ${key}`);
  }
  const sqs = new SQSClient({});
  const lambda = new LambdaClient({});
  const urls: Record<string, string> = { ingest: outputs.IngestDlqUrl!, failures: outputs.FailuresDlqUrl!, 'ingest-queue': outputs.IngestQueueUrl! };
  const signer = new SignatureV4({ service: 'execute-api', region: await sqs.config.region(), credentials: defaultProvider(), sha256: Sha256 });
  const api = async (method: string, path: string, body?: unknown): Promise<ApiReply> => {
    const url = new URL(path.replace(/^\//, ''), outputs.ApiUrl!.endsWith('/') ? outputs.ApiUrl! : `${outputs.ApiUrl}/`);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const signed = await signer.sign({
      method,
      protocol: url.protocol,
      hostname: url.hostname,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: { host: url.hostname, 'content-type': 'application/json' },
      ...(payload === undefined ? {} : { body: payload }),
    });
    const res = await fetch(url, { method, headers: signed.headers as Record<string, string>, ...(payload === undefined ? {} : { body: payload }) });
    return { status: res.status, body: await res.json().catch(() => ({})) };
  };
  return sqsTarget(`stack ${stackName}`, sqs, async (name) => urls[name]!, api, async (options) => {
    const out = await lambda.send(
      new InvokeCommand({ FunctionName: outputs.RedriveFunctionName!, Payload: Buffer.from(JSON.stringify({ dlqUrl: urls.ingest, dryRun: options.dryRun, max: options.max })) }),
    );
    if (out.FunctionError) throw new Error(`redrive failed: ${Buffer.from(out.Payload ?? []).toString()}`);
    return JSON.parse(Buffer.from(out.Payload ?? []).toString()) as RedriveResult;
  });
}

function sqsTarget(
  describe: string,
  sqs: SQSClient,
  urlOf: (name: DlqName | 'ingest-queue') => Promise<string>,
  api: Target['api'],
  redriveIngest: Target['redriveIngest'],
): Target {
  return {
    describe,
    api,
    redriveIngest,
    async depth(name) {
      const url = await urlOf(name);
      const a = (
        await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }))
      ).Attributes!;
      return { url, visible: Number(a.ApproximateNumberOfMessages), inFlight: Number(a.ApproximateNumberOfMessagesNotVisible) };
    },
    async inspect(name, max) {
      const url = await urlOf(name);
      const seen = new Map<string, DeadLetter>();
      for (let i = 0; i < 5 && seen.size < max; i++) {
        // A 1-second visibility: the messages are back on the queue a moment later, untouched.
        const r = await sqs.send(
          new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: Math.min(10, max - seen.size), VisibilityTimeout: 1, WaitTimeSeconds: 0, MessageSystemAttributeNames: ['ApproximateReceiveCount'] }),
        );
        const messages = (r.Messages ?? []).filter((m) => !seen.has(m.MessageId!));
        if (messages.length === 0) break;
        for (const m of messages) {
          seen.set(m.MessageId!, { messageId: m.MessageId!, receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? 0), body: m.Body ?? '' });
        }
      }
      return [...seen.values()];
    },
    async eachFailure(max, handle) {
      const url = await urlOf('failures');
      let handled = 0;
      while (handled < max) {
        const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: 1, VisibilityTimeout: 30, WaitTimeSeconds: 1 }));
        const m = r.Messages?.[0];
        if (!m) break;
        if (await handle(JSON.parse(m.Body ?? '{}'))) await sqs.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: m.ReceiptHandle! }));
        handled += 1;
      }
      return handled;
    },
  };
}

async function plainFetch(base: string, method: string, path: string, body?: unknown): Promise<ApiReply> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, body: await res.json().catch(() => ({})) };
}

/** SHA-256 for SigV4 over node:crypto (the Checksum interface the signer expects). */
type SourceData = string | ArrayBuffer | ArrayBufferView;
const toBuffer = (d: SourceData): Buffer =>
  typeof d === 'string' ? Buffer.from(d) : ArrayBuffer.isView(d) ? Buffer.from(d.buffer, d.byteOffset, d.byteLength) : Buffer.from(d);
class Sha256 {
  private readonly h;
  constructor(secret?: SourceData) {
    this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', toBuffer(secret));
  }
  update(data: SourceData): void {
    this.h.update(toBuffer(data));
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.h.digest());
  }
  reset(): void {}
}
