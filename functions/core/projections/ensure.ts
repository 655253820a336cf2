import type { Db, Queryable } from '../../db/types.ts';
import { createVersionTables, lockProjectionExclusive, tableFor, type ProjectionDefinition } from './definition.ts';

/**
 * Registers a projection at deploy or start-up: the first time, version 1 is created `live` with an
 * empty table, under the exclusive lock so no concurrent append can miss it. Returns `needsRebuild`
 * when events it handles were already in the log (a projection added to an existing log): run an
 * in-place rebuild of version 1 then. Idempotent.
 *
 * On later deploys it runs `createTable` again for the versions in use (live, rebuilding), and
 * refreshes the append's dispatch once (createVersionTables): the definition's DDL is idempotent,
 * and a deploy whose code adds an object to a version (the SQL apply function of migration 004,
 * say) creates it for the tables that already exist. Under the exclusive lock, so no append is
 * between its state read and its apply meanwhile.
 */
export async function ensureProjection(db: Db, definition: ProjectionDefinition): Promise<{ created: boolean; needsRebuild: boolean }> {
  return db.transaction(async (tx) => {
    await lockProjectionExclusive(tx, definition.name);
    const existing = await tx.query<{ version: number; state: string }>('select version, state from projections where name = $1', [definition.name]);
    if (existing.length > 0) {
      const inUse = existing.filter((v) => v.state === 'live' || v.state === 'rebuilding');
      await createVersionTables(tx, definition, inUse.map((v) => tableFor(definition.name, v.version)));
      return { created: false, needsRebuild: false };
    }
    await tx.query(`insert into projections (name, version, kind, state) values ($1, 1, $2, 'live')`, [
      definition.name,
      definition.kind,
    ]);
    await createVersionTables(tx, definition, [tableFor(definition.name, 1)]);
    const [seen] = await tx.query<{ any: boolean }>(
      'select exists (select 1 from events where type in (select jsonb_array_elements_text($1::jsonb))) as any',
      [JSON.stringify(definition.eventTypes)],
    );
    return { created: true, needsRebuild: seen?.any ?? false };
  });
}

export interface ReadTarget {
  version: number;
  table: string;
  /** An in-place rebuild is filling this table: documents may be missing or behind. */
  rebuilding: boolean;
}

/**
 * Which table a read goes to: the live version, or during an in-place rebuild the version being
 * rebuilt (there is no live one then), flagged so the caller can say so.
 */
export async function resolveReadTarget(q: Queryable, name: string): Promise<ReadTarget | undefined> {
  const [row] = await q.query<{ version: number; state: string }>(
    `select p.version, p.state
       from projections p
      where p.name = $1
        and (p.state = 'live'
             or (p.state = 'rebuilding' and exists (
                   select 1 from rebuilds r
                    where r.projection = p.name and r.version = p.version and r.mode = 'in-place'
                      and r.phase in ('starting', 'replaying', 'draining'))))
      order by p.state = 'live' desc
      limit 1`,
    [name],
  );
  if (!row) return undefined;
  return { version: row.version, table: tableFor(name, row.version), rebuilding: row.state !== 'live' };
}
