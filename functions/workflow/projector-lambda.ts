import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import middy from '@middy/core';
import { runProjector } from '../core/async/projector.ts';
import { projectionsOverview } from '../core/projections/overview.ts';
import { runtimeDb } from '../db/runtime.ts';
import { PROJECTIONS } from '../domain/projections.ts';

const logger = new Logger({ serviceName: 'ledgerline' });
const metrics = new Metrics({ namespace: 'Ledgerline', serviceName: 'projector' });
const db = runtimeDb();
const BUDGET_MS = Number(process.env.PROJECTOR_BUDGET_MS ?? 45_000);

/**
 * Runs every async projection's projector within a time budget (on a schedule, and nudged after
 * appends), then publishes the figures the alarms watch: lag, open gaps and their age, skip rows
 * pending and their age. The projector lease keeps one worker per projection even when a nudge and
 * the schedule overlap (the function also has a reserved concurrency of 1).
 */
export const handler = middy(async () => {
  const deadline = Date.now() + BUDGET_MS;
  for (const definition of PROJECTIONS.filter((p) => p.kind === 'async')) {
    const result = await runProjector(db, definition, { owner: 'projector-lambda', maxMs: Math.max(1_000, deadline - Date.now()), leaseMs: BUDGET_MS + 15_000 });
    logger.info('projector ran', { projection: definition.name, ...(result ?? { skipped: 'lease held elsewhere' }), gaps: result?.gaps.length });
  }
  for (const p of await projectionsOverview(db)) {
    const m = metrics.singleMetric();
    m.addDimension('Projection', p.name);
    m.addMetric('AsyncLag', MetricUnit.Count, p.lag);
    m.addMetric('OpenGaps', MetricUnit.Count, p.openGaps);
    m.addMetric('OldestGapAgeSeconds', MetricUnit.Seconds, Math.round((p.oldestGapAgeMs ?? 0) / 1000));
    m.addMetric('SkipsPending', MetricUnit.Count, p.skipsPending);
    m.addMetric('OldestSkipAgeSeconds', MetricUnit.Seconds, p.oldestSkipAgeSeconds ?? 0);
  }
})
  .use(injectLambdaContext(logger))
  .use(logMetrics(metrics));
