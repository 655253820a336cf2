import { rmSync } from 'node:fs';
import { SendMessageCommand } from '@aws-sdk/client-sqs';
import { runProjector } from '../core/async/projector.ts';
import type { Log } from '../core/log.ts';
import { ensureProjection } from '../core/projections/ensure.ts';
import { migrate } from '../db/migrate.ts';
import { loadMigrations } from '../db/migrations-dir.ts';
import { createPostgresDb } from '../db/postgres.ts';
import { PROJECTIONS } from '../domain/projections.ts';
import { createApi } from '../http/api.ts';
import { createIngestHandler } from '../queue/ingest.ts';
import { createRebuildStepHandler } from '../workflow/rebuild-steps.ts';
import { synthesizedRebuildDefinition } from '../../infra/local-definition.ts';
import { loadLocalConfig } from './config.ts';
import { startEmbeddedPostgres, type RunningPostgres } from './embedded-postgres.ts';
import { startLocalSqs } from './local-sqs.ts';
import { serveApi } from './http-server.ts';
import { localRebuildRunner } from './rebuild-state-machine.ts';
import { startSqsPoller } from './sqs-poller.ts';
import { stateMachineRebuilds } from './background-rebuilds.ts';

/**
 * `npm start`: the whole product on one machine, every server on loopback.
 * - PostgreSQL: embedded PostgreSQL 16 with data in LEDGERLINE_DATA_DIR (or DATABASE_URL);
 * - the migrations and the projections registered;
 * - the HTTP API (the deployed handler) on 127.0.0.1:PORT;
 * - rebuilds run by the state machine synthesized from the CDK stack (aws-local-stepfunctions);
 * - the async projector on a timer; the SQS ingest queue (fauxqs) polled into the deployed consumer.
 */
async function main(): Promise<void> {
  const config = loadLocalConfig();
  const log: Log = {
    info: (message, extra) => console.log(JSON.stringify({ level: 'info', message, ...extra })),
    warn: (message, extra) => console.log(JSON.stringify({ level: 'warn', message, ...extra })),
    error: (message, extra) => console.error(JSON.stringify({ level: 'error', message, ...extra })),
  };
  let embedded: RunningPostgres | undefined;
  let url = config.databaseUrl;
  if (!url) {
    if (config.fresh) {
      rmSync(config.dataDir, { recursive: true, force: true });
      rmSync(config.sqsDataDir, { recursive: true, force: true });
    }
    embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, port: config.postgresPort });
    url = embedded.url;
  }
  const db = createPostgresDb({ url, max: 10, applicationName: 'ledgerline-local' });
  const applied = await migrate(db, loadMigrations());
  for (const p of PROJECTIONS) await ensureProjection(db, p);

  const localSqs = await startLocalSqs(config.sqsPort, config.sqsDataDir);
  const { sqs, endpoint: sqsEndpoint } = localSqs;
  const ingest = await localSqs.queueWithDlq('ledgerline-ingest', config.ingestMaxReceives, { VisibilityTimeout: String(config.ingestVisibilitySeconds) });
  const ingestDlq = { url: ingest.dlqUrl };
  const failures = await localSqs.queue('ledgerline-failures');
  const poller = startSqsPoller({
    sqs,
    queueUrl: ingest.url,
    queueArn: ingest.arn,
    handler: rejectTypes(createIngestHandler({ db, projections: PROJECTIONS, log }), config.ingestRejectTypes, log),
    onError: (error) => log.error('ingest poller', { error: String(error) }),
  });

  const runner = localRebuildRunner({
    definition: synthesizedRebuildDefinition(),
    steps: createRebuildStepHandler({ db }),
    sendFailure: async (body) => {
      await sqs.send(new SendMessageCommand({ QueueUrl: failures.url, MessageBody: JSON.stringify(body) }));
    },
    retryIntervalMs: 500,
    waitMs: 200,
  });
  const rebuilds = stateMachineRebuilds(db, runner, log);
  const server = await serveApi(createApi({ db, rebuilds, log }), config.port);

  let projecting = true;
  const projector = (async () => {
    while (projecting) {
      for (const definition of PROJECTIONS.filter((p) => p.kind === 'async')) {
        await runProjector(db, definition, { owner: 'local-projector', maxMs: 2_000, leaseMs: 10_000 }).catch((error: unknown) =>
          log.error('projector', { error: String(error) }),
        );
      }
      await new Promise((r) => setTimeout(r, config.projectorIntervalMs));
    }
  })();

  const redacted = new URL(url);
  if (redacted.password) redacted.password = '***';
  console.log(
    [
      'ledgerline local stack',
      `  api          http://127.0.0.1:${config.port}  (try: curl http://127.0.0.1:${config.port}/projections)`,
      `  database     ${redacted.toString()}${embedded ? ` (embedded PostgreSQL 16, data in ${config.dataDir})` : ''}`,
      `  migrations   ${applied.length === 0 ? 'up to date' : `applied ${applied.join(', ')}`}`,
      `  sqs          ${sqsEndpoint} (queues kept in ${config.sqsDataDir})  ingest ${ingest.url}  dlq ${ingestDlq.url}  failures ${failures.url}`,
      ...(config.ingestRejectTypes.length > 0 ? [`  DRILL        the ingest consumer refuses ${config.ingestRejectTypes.join(', ')}`] : []),
      '  rebuilds     the CDK-synthesized state machine, run by aws-local-stepfunctions',
      `  projector    every ${config.projectorIntervalMs} ms (${PROJECTIONS.filter((p) => p.kind === 'async').map((p) => p.name).join(', ')})`,
      'ready. Ctrl-C stops everything.',
    ].join('\n'),
  );

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    console.log('stopping…');
    const steps: Array<[string, () => Promise<unknown>]> = [
      ['http', () => new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections(); // keep-alive clients would hold close() open
      })],
      ['projector', async () => {
        projecting = false;
        await projector;
      }],
      ['sqs poller', () => poller.stop()],
      ['rebuilds', () => rebuilds.idle()],
      ['sqs', () => localSqs.stop()],
      ['database pool', () => db.close()],
      ['postgres', async () => embedded?.stop()],
    ];
    // Ctrl-C in a terminal signals the whole process group, embedded PostgreSQL included, which
    // then shuts down on its own: no step may wait for it forever.
    let failed = false;
    for (const [name, step] of steps) {
      // The timer is deliberately not unref'd: a step waiting on a process that is already gone
      // leaves nothing else in the event loop, and Node would exit 0 in the middle of stopping.
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([step(), new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('timed out after 5 s')), 5_000)))]);
      } catch (error) {
        failed = true;
        console.error(`stopping ${name}: ${String(error)}`);
      } finally {
        clearTimeout(timer);
      }
    }
    console.log('stopped');
    process.exit(failed ? 1 : 0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
}

/** The LEDGERLINE_INGEST_REJECT_TYPES drill: fail the records of these types, as an outdated consumer would. */
function rejectTypes(handler: ReturnType<typeof createIngestHandler>, types: string[], log: Log): ReturnType<typeof createIngestHandler> {
  if (types.length === 0) return handler;
  return async (event) => {
    const refused = event.Records.filter((r) => {
      try {
        return types.includes((JSON.parse(r.body) as { type?: string }).type ?? '');
      } catch {
        return false;
      }
    });
    for (const r of refused) log.warn('observation rejected', { messageId: r.messageId, code: 'TYPE_NOT_HANDLED', reason: 'this consumer does not handle the type yet (drill)' });
    const result = await handler({ Records: event.Records.filter((r) => !refused.includes(r)) });
    return { batchItemFailures: [...result.batchItemFailures, ...refused.map((r) => ({ itemIdentifier: r.messageId }))] };
  };
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
