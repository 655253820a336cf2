import { dirname, join, resolve } from 'node:path';

/** Local-stack configuration, parsed once from the environment; a bad value fails loudly. */
export interface LocalConfig {
  /** Use this PostgreSQL instead of the embedded one. */
  databaseUrl: string | undefined;
  /** Where the embedded PostgreSQL keeps its data between runs. */
  dataDir: string;
  /** Throw the data folder away and start empty. */
  fresh: boolean;
  /** The HTTP API's port. */
  port: number;
  /** The embedded PostgreSQL's port (loopback only). */
  postgresPort: number;
  /** The local SQS (fauxqs) port (loopback only). */
  sqsPort: number;
  /** How often the async projector runs, in milliseconds. */
  projectorIntervalMs: number;
  /** Where the local SQS keeps its queues between runs. */
  sqsDataDir: string;
  /** Ingest queue: visibility timeout (seconds) and receives before a message goes to the DLQ. */
  ingestVisibilitySeconds: number;
  ingestMaxReceives: number;
  /**
   * Fault injection for drills and tests: observation types the local consumer refuses, as a
   * consumer that does not handle a new type yet would. Restarting without it is "the fix".
   */
  ingestRejectTypes: string[];
}

export function loadLocalConfig(env: NodeJS.ProcessEnv = process.env): LocalConfig {
  const port = tcpPort(env, 'PORT', 3000);
  const postgresPort = tcpPort(env, 'LEDGERLINE_PG_PORT', 54329);
  const sqsPort = tcpPort(env, 'LEDGERLINE_SQS_PORT', 3001);
  const projectorIntervalMs = env.LEDGERLINE_PROJECTOR_INTERVAL_MS === undefined ? 500 : Number(env.LEDGERLINE_PROJECTOR_INTERVAL_MS);
  if (!Number.isInteger(projectorIntervalMs) || projectorIntervalMs < 10) throw new Error('LEDGERLINE_PROJECTOR_INTERVAL_MS must be an integer of at least 10');
  const fresh = env.FRESH === undefined ? false : env.FRESH === '1' || env.FRESH === 'true';
  return {
    databaseUrl: env.DATABASE_URL || undefined,
    dataDir: resolve(env.LEDGERLINE_DATA_DIR ?? '.data/postgres'),
    fresh,
    port,
    postgresPort,
    sqsPort,
    projectorIntervalMs,
    sqsDataDir: resolve(env.LEDGERLINE_SQS_DATA_DIR ?? join(dirname(resolve(env.LEDGERLINE_DATA_DIR ?? '.data/postgres')), 'sqs')),
    ingestVisibilitySeconds: positiveInt(env, 'LEDGERLINE_INGEST_VISIBILITY_SECONDS', 5),
    ingestMaxReceives: positiveInt(env, 'LEDGERLINE_INGEST_MAX_RECEIVES', 5),
    ingestRejectTypes: (env.LEDGERLINE_INGEST_REJECT_TYPES ?? '').split(',').map((t) => t.trim()).filter(Boolean),
  };
}

function positiveInt(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${raw}`);
  return n;
}

function tcpPort(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  const port = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`${name} must be a TCP port, got ${raw}`);
  return port;
}
