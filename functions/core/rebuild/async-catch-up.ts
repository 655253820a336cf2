import type { Db } from '../../db/types.ts';
import { acquireProjectorLease, projectBatch } from '../async/projector.ts';
import type { ProjectionDefinition } from '../projections/definition.ts';
import { FencingTokenLostError } from './errors.ts';
import { fence } from './lease.ts';
import type { RebuildLease, RebuildRow } from './types.ts';

/**
 * Replay and drain of an ASYNC projection's rebuild. Appends never wait for async projections, so
 * there is no shared lock to close and no skip row: instead the new version runs the same gap-aware
 * projector as the live one, under a projector lease owned by the rebuild worker, from position 0.
 * Replay ends once the checkpoint reached Start's target with no gap at or below it; drain ends when
 * a batch finds nothing new. The flip then swaps the live version, and the scheduled projector
 * continues the new version from its own checkpoint and gaps: nothing is skipped in between.
 */
export async function catchUpAsync(
  db: Db,
  definition: ProjectionDefinition,
  lease: RebuildLease,
  step: 'replay' | 'drain',
  options: { batchSize: number; deadline: number },
): Promise<{ rebuild: RebuildRow; caughtUp: boolean }> {
  for (;;) {
    const rebuild = await db.transaction((tx) => fence(tx, lease));
    const expected = step === 'replay' ? 'replaying' : 'draining';
    if (rebuild.phase !== expected) return { rebuild, caughtUp: true };
    const projector = await acquireProjectorLease(db, definition, {
      owner: `rebuild:${lease.rebuildId}:${lease.owner}`,
      leaseMs: lease.leaseMs,
      version: rebuild.version,
    });
    if (!projector) throw new FencingTokenLostError(lease.rebuildId);
    const batch = await projectBatch(db, definition, projector, { batchSize: options.batchSize });
    const target = rebuild.target_position ?? 0;
    const caughtUp =
      step === 'replay'
        ? batch.checkpoint >= target && batch.gaps.every((g) => g.position > target)
        : batch.read < options.batchSize;
    await db.transaction(async (tx) => {
      await fence(tx, lease);
      await tx.query(
        `update rebuilds
            set checkpoint = least($2::bigint, coalesce(target_position, $2::bigint)), events_replayed = events_replayed + $3,
                phase = case when $4 then 'draining' else phase end, updated_at = now()
          where rebuild_id = $1::uuid`,
        [lease.rebuildId, batch.checkpoint, step === 'replay' ? batch.applied : 0, step === 'replay' && caughtUp],
      );
    });
    if (caughtUp) return { rebuild: { ...rebuild, phase: step === 'replay' ? 'draining' : rebuild.phase }, caughtUp };
    if (Date.now() >= options.deadline) return { rebuild, caughtUp: false };
  }
}
