import { RDSDataClient } from '@aws-sdk/client-rds-data';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { createDataApiDb } from './data-api.ts';
import { createPostgresDb } from './postgres.ts';
import type { Db } from './types.ts';

/**
 * Runtime configuration of a Lambda or local process, parsed once at module scope: a missing or
 * malformed value fails the container's start, loudly, not a request later. The driver is chosen
 * by configuration:
 *
 * - `DB_DRIVER=data-api` (the deployed default): the RDS Data API, over HTTPS. Needs
 *   `DB_CLUSTER_ARN`, `DB_SECRET_ARN` and `DB_NAME`; `DATA_API_ENDPOINT` points it elsewhere (a
 *   local stand-in). No connection, no VPC, no secret in the process: the Data API reads the secret.
 * - `DB_DRIVER=postgres` (the default otherwise): postgres.js over TCP, with either `DATABASE_URL`
 *   (local, tests) or the secret's ARN plus `DB_HOST` (deployed behind RDS Proxy). The secret is
 *   fetched once per container and cached, and never logged.
 */
export type RuntimeConfig =
  | { kind: 'url'; databaseUrl: string; poolSize: number }
  | { kind: 'secret'; secretArn: string; host: string; port: number; database: string; poolSize: number }
  | { kind: 'data-api'; clusterArn: string; secretArn: string; database: string; endpoint?: string };

export function loadRuntimeConfig(env: NodeJS.ProcessEnv = process.env): RuntimeConfig {
  const driver = env.DB_DRIVER ?? 'postgres';
  if (driver !== 'postgres' && driver !== 'data-api') throw new Error('DB_DRIVER must be postgres or data-api');
  if (driver === 'data-api') {
    const clusterArn = env.DB_CLUSTER_ARN;
    const secretArn = env.DB_SECRET_ARN;
    const database = env.DB_NAME;
    if (!clusterArn || !secretArn || !database) throw new Error('DB_DRIVER=data-api needs DB_CLUSTER_ARN, DB_SECRET_ARN and DB_NAME');
    if (env.DATA_API_ENDPOINT !== undefined && !URL.canParse(env.DATA_API_ENDPOINT)) throw new Error('DATA_API_ENDPOINT is not a URL');
    return { kind: 'data-api', clusterArn, secretArn, database, ...(env.DATA_API_ENDPOINT ? { endpoint: env.DATA_API_ENDPOINT } : {}) };
  }
  const poolSize = env.DB_POOL_SIZE === undefined ? 2 : Number(env.DB_POOL_SIZE);
  if (!Number.isInteger(poolSize) || poolSize < 1 || poolSize > 100) throw new Error('DB_POOL_SIZE must be 1-100');
  if (env.DATABASE_URL) {
    try {
      new URL(env.DATABASE_URL);
    } catch {
      throw new Error('DATABASE_URL is not a URL');
    }
    return { kind: 'url', databaseUrl: env.DATABASE_URL, poolSize };
  }
  const secretArn = env.DB_SECRET_ARN;
  const host = env.DB_HOST;
  if (!secretArn || !host) throw new Error('set DATABASE_URL, or DB_SECRET_ARN and DB_HOST, or DB_DRIVER=data-api');
  const port = Number(env.DB_PORT ?? 5432);
  if (!Number.isInteger(port)) throw new Error('DB_PORT must be a port number');
  return { kind: 'secret', secretArn, host, port, database: env.DB_NAME ?? 'ledgerline', poolSize };
}

let shared: Db | undefined;

/** The process's one pool, created on first use and reused by every invocation of the container. */
export function runtimeDb(config: RuntimeConfig = loadRuntimeConfig()): Db {
  if (shared) return shared;
  if (config.kind === 'data-api') {
    shared = createDataApiDb({
      // One attempt per call: the core retries whole transactions; an SDK retry of a statement
      // whose response was lost could run it twice inside one (data-api.ts).
      client: new RDSDataClient({ maxAttempts: 1, ...(config.endpoint ? { endpoint: config.endpoint } : {}) }),
      resourceArn: config.clusterArn,
      secretArn: config.secretArn,
      database: config.database,
    });
    return shared;
  }
  if (config.kind === 'url') {
    shared = createPostgresDb({ url: config.databaseUrl, max: config.poolSize, applicationName: 'ledgerline-lambda' });
    return shared;
  }
  let ready: Promise<Db> | undefined;
  const resolve = () =>
    (ready ??= (async () => {
      const secret = await new SecretsManagerClient({}).send(new GetSecretValueCommand({ SecretId: config.secretArn }));
      const { username, password } = JSON.parse(secret.SecretString ?? '{}') as { username?: string; password?: string };
      if (!username || !password) throw new Error('the database secret has no username/password');
      const url = new URL(`postgres://${config.host}:${config.port}/${config.database}`);
      url.username = encodeURIComponent(username);
      url.password = encodeURIComponent(password);
      url.searchParams.set('sslmode', 'require');
      return createPostgresDb({ url: url.toString(), max: config.poolSize, applicationName: 'ledgerline-lambda' });
    })().catch((error: unknown) => {
      ready = undefined; // retry the lookup on the next call
      throw error;
    }));
  shared = {
    query: async (text, params) => (await resolve()).query(text, params),
    transaction: async (fn, options) => (await resolve()).transaction(fn, options),
    close: async () => (await resolve()).close(),
  };
  return shared;
}
