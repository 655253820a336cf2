import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { SFNClient } from '@aws-sdk/client-sfn';
import middy from '@middy/core';
import type { APIGatewayProxyEvent, APIGatewayProxyResult } from 'aws-lambda';
import { asLog } from '../core/powertools-log.ts';
import { runtimeDb } from '../db/runtime.ts';
import { stepFunctionsRebuilds } from '../workflow/sfn-starter.ts';
import { createApi } from './api.ts';

// Once per container: logger, metrics, configuration, pool, clients.
const logger = new Logger({ serviceName: 'ledgerline' });
const metrics = new Metrics({ namespace: 'Ledgerline', serviceName: 'api' });
const stateMachineArn = process.env.REBUILD_STATE_MACHINE_ARN;
if (!stateMachineArn) throw new Error('REBUILD_STATE_MACHINE_ARN is not set');
const db = runtimeDb();
const api = createApi({ db, rebuilds: stepFunctionsRebuilds(db, new SFNClient({}), stateMachineArn), log: asLog(logger) });

const projectorFunction = process.env.PROJECTOR_FUNCTION_NAME;
const lambdaClient = new LambdaClient({});
let lastNudge = 0;

/**
 * After a successful write, nudge the async projector (an asynchronous invoke, at most every 2 s per
 * container); the schedule is the backstop if a nudge is lost. Its failure never fails the request.
 */
async function nudgeProjector(): Promise<void> {
  if (!projectorFunction || Date.now() - lastNudge < 2_000) return;
  lastNudge = Date.now();
  await lambdaClient
    .send(new InvokeCommand({ FunctionName: projectorFunction, InvocationType: 'Event' }))
    .catch((error: unknown) => logger.warn('projector nudge failed', { error: String(error) }));
}

export const handler = middy(async (event: APIGatewayProxyEvent): Promise<APIGatewayProxyResult> => {
  const response = await api(event);
  if (event.httpMethod === 'POST' && response.statusCode === 201) await nudgeProjector();
  metrics.addMetric(response.statusCode >= 500 ? 'ServerErrors' : response.statusCode >= 400 ? 'ClientErrors' : 'Requests', MetricUnit.Count, 1);
  return response;
})
  .use(injectLambdaContext(logger))
  .use(logMetrics(metrics));
