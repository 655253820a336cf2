import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import middy from '@middy/core';
import { asLog } from '../core/powertools-log.ts';
import { runtimeDb } from '../db/runtime.ts';
import { PROJECTIONS } from '../domain/projections.ts';
import { createIngestHandler } from './ingest.ts';

// Created once per container: the logger, the configuration and the pool.
const logger = new Logger({ serviceName: 'ledgerline', logLevel: 'INFO' });
const db = runtimeDb();

/** The ingest queue's Lambda (event source mapping with ReportBatchItemFailures). */
const log = asLog(logger);

/** The ingest queue's Lambda (event source mapping with ReportBatchItemFailures). */
export const handler = middy(createIngestHandler({ db, projections: PROJECTIONS, log })).use(injectLambdaContext(logger));
