import type { Db } from '../../db/types.ts';
import { clearTables, lockProjectionExclusive, type ProjectionDefinition } from '../projections/definition.ts';
import { RebuildNotCancellableError, RebuildNotFoundError } from './errors.ts';
import { REBUILD_COLUMNS, setRebuildTimeouts } from './lease.ts';
import { withLockRetries, type LockRetryOptions } from './start.ts';
import type { RebuildRow } from './types.ts';

/**
 * Cancels an unfinished rebuild and leaves the live version untouched: the new version is marked
 * `failed` (appends stop writing skip rows for it), its skip rows and table are removed, and the
 * fencing token moves so that a worker still running fails its next batch.
 *
 * It takes the exclusive lock like Start and Flip, so no append that read `rebuilding` is still
 * writing skip rows for the version when they are deleted.
 *
 * An in-place rebuild past `starting` cannot be cancelled: its table (the live one) was truncated
 * at Start, and only finishing the rebuild (resume it) restores the read model.
 */
export async function cancelRebuild(
  db: Db,
  definition: ProjectionDefinition,
  rebuildId: string,
  options: LockRetryOptions = {},
): Promise<RebuildRow> {
  return withLockRetries(options, (lockTimeoutMs) =>
    db.transaction(async (tx) => {
      await setRebuildTimeouts(tx, lockTimeoutMs);
      await lockProjectionExclusive(tx, definition.name);
      const [rebuild] = await tx.query<RebuildRow>(
        `select ${REBUILD_COLUMNS} from rebuilds where rebuild_id = $1::uuid and projection = $2 for update`,
        [rebuildId, definition.name],
      );
      if (!rebuild) throw new RebuildNotFoundError(rebuildId);
      if (!['starting', 'replaying', 'draining'].includes(rebuild.phase)) return rebuild;
      if (rebuild.mode === 'in-place' && rebuild.phase !== 'starting') {
        throw new RebuildNotCancellableError(rebuildId, 'an in-place rebuild has truncated the live table; resume it instead');
      }
      if (rebuild.mode === 'blue-green') {
        await tx.query(`update projections set state = 'failed', updated_at = now() where name = $1 and version = $2`, [
          definition.name,
          rebuild.version,
        ]);
        await tx.query('delete from projection_skips where projection = $1 and version = $2', [definition.name, rebuild.version]);
        await clearTables(tx, definition, rebuild.version, 'drop');
      }
      const [cancelled] = await tx.query<RebuildRow>(
        `update rebuilds
            set phase = 'cancelled', fencing_token = fencing_token + 1, lease_owner = null, lease_expires_at = null,
                error = coalesce(error, 'cancelled'), finished_at = now(), updated_at = now()
          where rebuild_id = $1::uuid
          returning ${REBUILD_COLUMNS}`,
        [rebuildId],
      );
      return cancelled!;
    }),
  );
}

/** Records a step's failure on the rebuild (the workflow's Catch); the lease expires and a later attempt resumes. */
export async function recordRebuildError(db: Db, rebuildId: string, message: string): Promise<void> {
  await db.query('update rebuilds set error = $2, updated_at = now() where rebuild_id = $1::uuid', [rebuildId, message.slice(0, 2000)]);
}
