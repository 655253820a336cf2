import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
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

export const handler = middy(async (event: APIGatewayProxyEvent): Promise<APIGatewayProxyResult> => {
  const response = await api(event);
  metrics.addMetric(response.statusCode >= 500 ? 'ServerErrors' : response.statusCode >= 400 ? 'ClientErrors' : 'Requests', MetricUnit.Count, 1);
  return response;
})
  .use(injectLambdaContext(logger))
  .use(logMetrics(metrics));
