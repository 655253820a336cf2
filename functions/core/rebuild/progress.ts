import type { Queryable } from '../../db/types.ts';
import { RebuildNotFoundError } from './errors.ts';
import { REBUILD_COLUMNS } from './lease.ts';
import type { RebuildMode, RebuildPhase, RebuildRow } from './types.ts';

export interface RebuildProgress {
  rebuildId: string;
  projection: string;
  version: number;
  mode: RebuildMode;
  phase: RebuildPhase;
  /** Replay progress in log positions: the checkpoint reached, out of the target recorded at Start. */
  replayed: number;
  total: number;
  eventsReplayed: number;
  skipsDrained: number;
  skipsPending: number;
  attempts: number;
  startedAt: string;
  finishedAt: string | null;
  error: string | null;
}

/** Progress a caller can read at any time, without the lease. */
export async function getRebuildProgress(q: Queryable, projection: string, rebuildId: string): Promise<RebuildProgress> {
  const [row] = await q.query<RebuildRow & { skips_pending: number }>(
    `select ${REBUILD_COLUMNS},
            (select count(*) from projection_skips s where s.projection = r.projection and s.version = r.version)::bigint as skips_pending
       from rebuilds r where rebuild_id = $1::uuid and projection = $2`,
    [rebuildId, projection],
  );
  if (!row) throw new RebuildNotFoundError(rebuildId);
  return {
    rebuildId: row.rebuild_id,
    projection: row.projection,
    version: row.version,
    mode: row.mode,
    phase: row.phase,
    replayed: row.phase === 'starting' ? 0 : row.checkpoint,
    total: row.target_position ?? 0,
    eventsReplayed: row.events_replayed,
    skipsDrained: row.skips_drained,
    skipsPending: row.skips_pending,
    attempts: row.attempts,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    error: row.error,
  };
}
