import { rmSync } from 'node:fs';
import { migrate } from '../db/migrate.ts';
import { loadMigrations } from '../db/migrations-dir.ts';
import { createPostgresDb } from '../db/postgres.ts';
import { loadLocalConfig } from './config.ts';
import { startEmbeddedPostgres, type RunningPostgres } from './embedded-postgres.ts';

/**
 * `npm start`: the local stack. Today it runs the database (embedded PostgreSQL 16 with persistent
 * data, or DATABASE_URL) with every migration applied; the HTTP API, the rebuild state machine and
 * the pollers join it as their issues land.
 */
async function main(): Promise<void> {
  const config = loadLocalConfig();
  let embedded: RunningPostgres | undefined;
  let url = config.databaseUrl;
  if (!url) {
    if (config.fresh) rmSync(config.dataDir, { recursive: true, force: true });
    embedded = await startEmbeddedPostgres({ dataDir: config.dataDir, port: config.postgresPort });
    url = embedded.url;
  }
  const db = createPostgresDb({ url, max: 2 });
  const applied = await migrate(db, loadMigrations());

  const redacted = new URL(url);
  if (redacted.password) redacted.password = '***';
  console.log(
    [
      'ledgerline local stack',
      `  database   ${redacted.toString()}${embedded ? ` (embedded PostgreSQL 16, data in ${config.dataDir})` : ''}`,
      `  migrations ${applied.length === 0 ? 'up to date' : `applied ${applied.join(', ')}`}`,
      '  Ctrl-C stops everything.',
    ].join('\n'),
  );

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await db.close();
    await embedded?.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
