import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { SQSClient } from '@aws-sdk/client-sqs';
import middy from '@middy/core';
import { ValidationError } from '../core/errors.ts';
import { redrive } from './redrive.ts';

const logger = new Logger({ serviceName: 'ledgerline' });
const sqs = new SQSClient({});
/** Which DLQ goes back to which queue: only these pairs, configured by the stack. */
const PAIRS = JSON.parse(process.env.REDRIVE_PAIRS ?? '{}') as Record<string, string>;

/** Admin-only (invoked by the CLI with IAM): `{ dlqUrl, max?, dryRun? }`. */
export const handler = middy(async (event: { dlqUrl?: unknown; max?: unknown; dryRun?: unknown }) => {
  const dlqUrl = typeof event.dlqUrl === 'string' ? event.dlqUrl : '';
  const targetUrl = PAIRS[dlqUrl];
  if (!targetUrl) throw new ValidationError([{ path: 'dlqUrl', message: `must be one of ${Object.keys(PAIRS).join(', ')}` }]);
  const max = typeof event.max === 'number' && event.max > 0 ? Math.min(event.max, 10_000) : 1_000;
  const result = await redrive(sqs, { dlqUrl, targetUrl, max, dryRun: event.dryRun === true });
  logger.info('redrive', { dlqUrl, moved: result.moved, previewed: result.preview.length });
  return result;
}).use(injectLambdaContext(logger));
