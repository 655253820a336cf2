import type { Db } from '../../db/types.ts';
import { clearTables, type ProjectionDefinition } from '../projections/definition.ts';
import { RebuildNotFoundError } from './errors.ts';

/**
 * Release, after a blue-green flip: drops the retired version's table. Readers resolve the live
 * version per query, so only a read that resolved the old version just before the flip can still
 * touch it; DROP waits for such reads (ACCESS EXCLUSIVE). Idempotent, and needs no lease: the rebuild
 * is done and nothing else writes a retired version.
 */
export async function releaseRebuild(db: Db, definition: ProjectionDefinition, rebuildId: string): Promise<void> {
  await db.transaction(async (tx) => {
    const [rebuild] = await tx.query<{ phase: string; mode: string; previous_version: number | null }>(
      'select phase, mode, previous_version from rebuilds where rebuild_id = $1::uuid and projection = $2',
      [rebuildId, definition.name],
    );
    if (!rebuild) throw new RebuildNotFoundError(rebuildId);
    if (rebuild.phase !== 'done' || rebuild.mode !== 'blue-green' || rebuild.previous_version === null) return;
    const [previous] = await tx.query<{ state: string }>('select state from projections where name = $1 and version = $2', [
      definition.name,
      rebuild.previous_version,
    ]);
    if (previous?.state !== 'retired') return;
    await clearTables(tx, definition, rebuild.previous_version, 'drop');
  });
}
