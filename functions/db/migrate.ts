import { createHash } from 'node:crypto';
import { AppError } from '../core/errors.ts';
import { splitSqlStatements } from './split-sql.ts';
import type { Db } from './types.ts';

export interface Migration {
  /** File name, e.g. `001_event_store.sql`; the numeric prefix orders them. */
  name: string;
  sql: string;
}

export class MigrationError extends AppError {
  constructor(code: string, message: string) {
    super(code, 'internal', message);
  }
}

/** Arbitrary constant: the transaction-level advisory lock that serialises migration runs. */
const MIGRATION_LOCK_KEY = 7_311_979_011;

export function checksum(sql: string): string {
  return createHash('sha256').update(sql).digest('hex');
}

/**
 * Applies pending migrations in order, each in its own transaction, and returns the names applied.
 *
 * Concurrency: every transaction first takes `pg_advisory_xact_lock(MIGRATION_LOCK_KEY)` and only
 * then (in a new statement, so with a snapshot taken after the lock) reads what is applied. Two
 * processes migrating at once therefore serialise per file, and the second sees the first's record
 * and skips the file. The lock is transaction-scoped (not a session lock) so that the runner works
 * over the RDS Data API, where consecutive calls may use different connections.
 *
 * Integrity: a file that was applied and has since been edited (checksum differs), or that was
 * applied and is now missing, stops the run before anything else is applied.
 */
export async function migrate(db: Db, migrations: readonly Migration[]): Promise<string[]> {
  const ordered = [...migrations].sort((a, b) => a.name.localeCompare(b.name));
  const seen = new Set<string>();
  for (const m of ordered) {
    if (!/^\d{3,}_[a-z0-9_]+\.sql$/.test(m.name)) {
      throw new MigrationError('MIGRATION_NAME_INVALID', `migration ${m.name} must be named like 001_name.sql`);
    }
    const prefix = m.name.split('_')[0]!;
    if (seen.has(prefix)) throw new MigrationError('MIGRATION_NUMBER_REUSED', `two migrations are numbered ${prefix}`);
    seen.add(prefix);
  }

  const applied: string[] = [];
  for (const migration of ordered) {
    const didApply = await db.transaction(async (tx) => {
      await tx.query('select pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY]);
      await tx.query(
        `create table if not exists schema_migrations (
           name text primary key,
           checksum text not null,
           applied_at timestamptz not null default now()
         )`,
      );
      const rows = await tx.query<{ name: string; checksum: string }>(
        'select name, checksum from schema_migrations order by name',
      );
      verifyApplied(rows, ordered);
      if (rows.some((r) => r.name === migration.name)) return false;
      for (const statement of splitSqlStatements(migration.sql)) {
        await tx.query(statement);
      }
      await tx.query('insert into schema_migrations (name, checksum) values ($1, $2)', [
        migration.name,
        checksum(migration.sql),
      ]);
      return true;
    });
    if (didApply) applied.push(migration.name);
  }
  return applied;
}

function verifyApplied(rows: ReadonlyArray<{ name: string; checksum: string }>, files: readonly Migration[]): void {
  const byName = new Map(files.map((f) => [f.name, f]));
  for (const row of rows) {
    const file = byName.get(row.name);
    if (!file) {
      throw new MigrationError('MIGRATION_MISSING', `migration ${row.name} was applied but its file is missing`);
    }
    if (checksum(file.sql) !== row.checksum) {
      throw new MigrationError(
        'MIGRATION_CHECKSUM_MISMATCH',
        `migration ${row.name} was edited after it was applied; add a new migration instead`,
      );
    }
  }
}
