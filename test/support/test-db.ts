import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import { migrate } from '../../functions/db/migrate.ts';
import { loadMigrations } from '../../functions/db/migrations-dir.ts';
import { createPostgresDb } from '../../functions/db/postgres.ts';
import type { Db } from '../../functions/db/types.ts';
import { startLocalDataApi, type LocalDataApi } from './data-api-local.ts';

export interface TestDatabase {
  db: Db;
  url: string;
  name: string;
  /** Closes every pool opened through this helper and drops the database. */
  drop(): Promise<void>;
  /** Another pool on the same database, closed by drop(). */
  connect(max?: number): Db;
}

export function serverUrl(): string {
  return inject('databaseUrl');
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** A fresh database on the run's server, migrated unless `migrated: false`. */
export async function createTestDatabase(options: { migrated?: boolean; max?: number } = {}): Promise<TestDatabase> {
  const admin = createPostgresDb({ url: serverUrl(), max: 1 });
  const name = `t_${randomBytes(6).toString('hex')}`;
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.close();
  }
  const url = withDatabase(serverUrl(), name);
  const pools: Db[] = [];
  const connect = (max = 10) => {
    const db = createPostgresDb({ url, max });
    pools.push(db);
    return db;
  };
  let db = connect(options.max ?? 20);
  if (options.migrated !== false) await migrate(db, loadMigrations());
  // LEDGERLINE_TEST_DRIVER=data-api runs a whole test file's main Db over the Data API stand-in
  // (a wider net than drivers.int.test.ts, for hunting Data API incompatibilities by hand).
  let api: LocalDataApi | undefined;
  if (process.env.LEDGERLINE_TEST_DRIVER === 'data-api') {
    api = await startLocalDataApi(url);
    db = api.db;
  }
  return {
    db,
    url,
    name,
    connect,
    async drop() {
      await api?.stop();
      await Promise.all(pools.map((p) => p.close()));
      const adminDb = createPostgresDb({ url: serverUrl(), max: 1 });
      try {
        await adminDb.query(`drop database if exists ${name} with (force)`);
      } finally {
        await adminDb.close();
      }
    },
  };
}
