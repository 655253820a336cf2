import { randomUUID } from 'node:crypto';
import type { Db } from '../../db/types.ts';
import { isSqlState, ValidationError } from '../errors.ts';
import type { ProjectionDefinition } from '../projections/definition.ts';
import { ProjectionNotFoundError, RebuildInProgressError, RebuildNotFoundError, RebuildNotResumableError } from './errors.ts';
import { REBUILD_COLUMNS } from './lease.ts';
import { DEFAULT_LEASE_MS, type RebuildLease, type RebuildMode, type RebuildPhase, type RebuildRow } from './types.ts';

export interface AcquireOptions {
  mode?: RebuildMode;
  /**
   * Who works on the rebuild (an execution's id, a random id per request or worker): unique per
   * worker, since a request under the owner that holds the lease is given the lease again (below).
   */
  owner: string;
  leaseMs?: number;
  /**
   * Take over exactly this rebuild (after its lease expired), never start another: a worker that
   * resumes a rebuild it knows must not start a fresh one because that rebuild ended meanwhile.
   * REBUILD_NOT_RESUMABLE when it has ended (its phase in the details).
   */
  resume?: string;
}

export interface Acquired {
  lease: RebuildLease;
  rebuild: RebuildRow;
  /** True when an unfinished rebuild with an expired lease was taken over (crash recovery). */
  resumed: boolean;
}

/**
 * Acquire: starts a rebuild of `definition`, or takes over the unfinished one whose lease expired,
 * or whose lease `options.owner` itself holds: a worker that asks again under its own name (a
 * state machine's Acquire retried after its commit, when the answer was lost with the connection or
 * with Lambda's response) gets the rebuild it started, with a new fencing token, rather than
 * REBUILD_IN_PROGRESS until its own lease expires. The new token fences anything still in flight
 * under the old one, as any takeover does.
 *
 * One unfinished rebuild per projection is enforced by the partial unique index
 * `rebuilds_one_active`, so two concurrent requests cannot both start one (the loser gets
 * REBUILD_IN_PROGRESS). A takeover bumps the fencing token in a conditional UPDATE that re-checks the
 * expiry under the row lock, so it can only happen between a dead worker's batches, never inside one
 * (lease.ts), and the new worker continues from the recorded phase and checkpoint.
 */
export async function acquireRebuild(db: Db, definition: ProjectionDefinition, options: AcquireOptions): Promise<Acquired> {
  const mode = options.mode ?? 'blue-green';
  if (mode !== 'blue-green' && mode !== 'in-place') {
    throw new ValidationError([{ path: 'mode', message: 'must be "blue-green" or "in-place"' }]);
  }
  const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
  try {
    return await db.transaction(async (tx) => {
      const [active] = await tx.query<RebuildRow & { expired: boolean }>(
        `select ${REBUILD_COLUMNS}, lease_expires_at is null or lease_expires_at < now() as expired
           from rebuilds where projection = $1 and phase in ('starting', 'replaying', 'draining')`,
        [definition.name],
      );
      if (options.resume !== undefined && active?.rebuild_id !== options.resume) {
        const [row] = await tx.query<{ phase: RebuildPhase }>('select phase from rebuilds where rebuild_id = $1::uuid and projection = $2', [
          options.resume,
          definition.name,
        ]);
        if (!row) throw new RebuildNotFoundError(options.resume);
        throw new RebuildNotResumableError(options.resume, row.phase);
      }
      if (active) {
        const [taken] = await tx.query<RebuildRow>(
          `update rebuilds
              set lease_owner = $2, fencing_token = fencing_token + 1, attempts = attempts + 1,
                  lease_expires_at = now() + make_interval(secs => $3::double precision / 1000), updated_at = now()
            where rebuild_id = $1::uuid and (lease_expires_at is null or lease_expires_at < now() or lease_owner = $2)
            returning ${REBUILD_COLUMNS}`,
          [active.rebuild_id, options.owner, leaseMs],
        );
        if (!taken) throw new RebuildInProgressError(definition.name, active.rebuild_id);
        return { lease: leaseOf(taken, options.owner, leaseMs), rebuild: taken, resumed: true };
      }

      const versions = await tx.query<{ version: number; state: string }>(
        'select version, state from projections where name = $1 order by version',
        [definition.name],
      );
      if (versions.length === 0) throw new ProjectionNotFoundError(definition.name);
      const live = versions.find((v) => v.state === 'live');
      const newest = versions[versions.length - 1]!.version;
      const version = mode === 'blue-green' ? newest + 1 : (live?.version ?? newest);
      const [created] = await tx.query<RebuildRow>(
        `insert into rebuilds (rebuild_id, projection, version, previous_version, mode, phase, lease_owner, lease_expires_at)
         values ($1::uuid, $2, $3, $4, $5, 'starting', $6, now() + make_interval(secs => $7::double precision / 1000))
         returning ${REBUILD_COLUMNS}`,
        [randomUUID(), definition.name, version, mode === 'blue-green' ? (live?.version ?? null) : null, mode, options.owner, leaseMs],
      );
      return { lease: leaseOf(created!, options.owner, leaseMs), rebuild: created!, resumed: false };
    });
  } catch (error) {
    if (isSqlState(error, '23505')) {
      const [row] = await db.query<{ rebuild_id: string }>(
        `select rebuild_id::text from rebuilds where projection = $1 and phase in ('starting', 'replaying', 'draining')`,
        [definition.name],
      );
      throw new RebuildInProgressError(definition.name, row?.rebuild_id ?? 'unknown');
    }
    throw error;
  }
}

function leaseOf(row: RebuildRow, owner: string, leaseMs: number): RebuildLease {
  return { rebuildId: row.rebuild_id, owner, fencingToken: row.fencing_token, leaseMs };
}
