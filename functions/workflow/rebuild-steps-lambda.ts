import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import middy from '@middy/core';
import { runtimeDb } from '../db/runtime.ts';
import { createRebuildStepHandler } from './rebuild-steps.ts';

const logger = new Logger({ serviceName: 'ledgerline' });
const db = runtimeDb();

/** Every Task of the rebuild state machine invokes this function with `{ step, state }`. */
export const handler = middy(createRebuildStepHandler({ db })).use(injectLambdaContext(logger));
