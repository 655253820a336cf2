import type { CloudFormationCustomResourceEvent } from 'aws-lambda';
import { ensureProjection } from '../core/projections/ensure.ts';
import { PROJECTIONS } from '../domain/projections.ts';
import { migrate } from './migrate.ts';
import { loadMigrations } from './migrations-dir.ts';
import { runtimeDb } from './runtime.ts';

const db = runtimeDb();

/**
 * The custom resource that applies migrations at deploy time, before the API serves traffic (the
 * API depends on it). The SQL files are copied next to the bundle (MIGRATIONS_DIR). Idempotent and
 * serialised by the runner's advisory lock; an edited applied file fails the deployment.
 * Then it registers the projections (ensureProjection), as `npm start` does locally: without it an
 * append on AWS would find no projection to apply. A projection added to a log that already holds
 * its events is reported (`NeedsRebuild`); the operator starts that rebuild (`ledgerline rebuild`).
 */
export async function handler(event: CloudFormationCustomResourceEvent) {
  if (event.RequestType === 'Delete') return { PhysicalResourceId: event.PhysicalResourceId };
  const applied = await migrate(db, loadMigrations(process.env.MIGRATIONS_DIR));
  const needsRebuild: string[] = [];
  for (const p of PROJECTIONS) if ((await ensureProjection(db, p)).needsRebuild) needsRebuild.push(p.name);
  return {
    PhysicalResourceId: 'ledgerline-migrations',
    Data: { Applied: applied.join(',') || 'none', NeedsRebuild: needsRebuild.join(',') || 'none' },
  };
}
