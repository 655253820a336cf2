import type { CloudFormationCustomResourceEvent } from 'aws-lambda';
import { migrate } from './migrate.ts';
import { loadMigrations } from './migrations-dir.ts';
import { runtimeDb } from './runtime.ts';

const db = runtimeDb();

/**
 * The custom resource that applies migrations at deploy time, before the API serves traffic (the
 * API depends on it). The SQL files are copied next to the bundle (MIGRATIONS_DIR). Idempotent and
 * serialised by the runner's advisory lock; an edited applied file fails the deployment.
 */
export async function handler(event: CloudFormationCustomResourceEvent) {
  if (event.RequestType === 'Delete') return { PhysicalResourceId: event.PhysicalResourceId };
  const applied = await migrate(db, loadMigrations(process.env.MIGRATIONS_DIR));
  return { PhysicalResourceId: 'ledgerline-migrations', Data: { Applied: applied.join(',') || 'none' } };
}
