import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { createPostgresDb } from './postgres.ts';
import type { Db } from './types.ts';

/**
 * Runtime configuration of a Lambda or local process, parsed once at module scope: a missing or
 * malformed value fails the container's start, loudly, not a request later. Either DATABASE_URL
 * (local, tests) or the Aurora secret's ARN plus host (deployed); the secret is fetched once per
 * container and cached, and never logged.
 */
export type RuntimeConfig =
  | { kind: 'url'; databaseUrl: string; poolSize: number }
  | { kind: 'secret'; secretArn: string; host: string; port: number; database: string; poolSize: number };

export function loadRuntimeConfig(env: NodeJS.ProcessEnv = process.env): RuntimeConfig {
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
  if (!secretArn || !host) throw new Error('set DATABASE_URL, or DB_SECRET_ARN and DB_HOST');
  const port = Number(env.DB_PORT ?? 5432);
  if (!Number.isInteger(port)) throw new Error('DB_PORT must be a port number');
  return { kind: 'secret', secretArn, host, port, database: env.DB_NAME ?? 'ledgerline', poolSize };
}

let shared: Db | undefined;

/** The process's one pool, created on first use and reused by every invocation of the container. */
export function runtimeDb(config: RuntimeConfig = loadRuntimeConfig()): Db {
  if (shared) return shared;
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
