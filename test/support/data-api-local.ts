import { RDSDataClient } from '@aws-sdk/client-rds-data';
import { createRequire } from 'node:module';
import { createDataApiDb } from '../../functions/db/data-api.ts';
import type { Db } from '../../functions/db/types.ts';
import { freePort } from './local-stack.ts';

interface DataApiLocalServer {
  stop(): Promise<void>;
}

// data-api-local is CommonJS with typings that pull in express's; load it untyped.
const { dataApiLocal } = createRequire(import.meta.url)('data-api-local') as {
  dataApiLocal(options: { server: { hostname: string; port: number }; database: Record<string, unknown>; logger?: unknown }): Promise<DataApiLocalServer>;
};

export interface LocalDataApi {
  db: Db;
  endpoint: string;
  /** Data API calls made so far, by command (ExecuteStatement, BeginTransaction, …). */
  calls: Map<string, number>;
  stop(): Promise<void>;
}

/**
 * The RDS Data API stand-in (data-api-local, on pg 8 through the package.json override) in front of
 * a test database, and the project's Data API driver talking to it over HTTP with the real SDK
 * client. The ARNs are placeholders: the stand-in ignores them, as it ignores authentication.
 */
export async function startLocalDataApi(databaseUrl: string): Promise<LocalDataApi> {
  const url = new URL(databaseUrl);
  const port = await freePort();
  const server = await dataApiLocal({
    server: { hostname: '127.0.0.1', port },
    logger: null,
    database: {
      engine: 'postgresql',
      host: url.hostname,
      port: Number(url.port || 5432),
      user: decodeURIComponent(url.username || 'postgres'),
      password: decodeURIComponent(url.password),
      database: url.pathname.slice(1),
    },
  });
  const client = new RDSDataClient({
    endpoint: `http://127.0.0.1:${port}`,
    region: 'us-east-1',
    credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
    maxAttempts: 1,
  });
  const calls = new Map<string, number>();
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const name = String(context.commandName ?? 'unknown').replace(/Command$/, '');
      calls.set(name, (calls.get(name) ?? 0) + 1);
      return next(args);
    },
    { step: 'initialize', name: 'countCalls' },
  );
  const db = createDataApiDb({
    client,
    resourceArn: 'arn:aws:rds:us-east-1:123456789012:cluster:local',
    secretArn: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:local',
    database: url.pathname.slice(1),
  });
  return {
    db,
    endpoint: `http://127.0.0.1:${port}`,
    calls,
    async stop() {
      client.destroy();
      await server.stop();
    },
  };
}
