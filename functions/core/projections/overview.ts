import type { Queryable } from '../../db/types.ts';

export interface ProjectionOverview {
  name: string;
  kind: 'inline' | 'async';
  liveVersion: number | null;
  state: string;
  /** Async: highest position processed. Inline: the replay target of the last rebuild. */
  checkpoint: number;
  skipsPending: number;
  /** Age of the oldest pending skip row, in seconds (a rebuild that stopped draining shows here). */
  oldestSkipAgeSeconds: number | null;
  openGaps: number;
  /** Age of the oldest open gap, in milliseconds (async). */
  oldestGapAgeMs: number | null;
  /** Async: head position minus checkpoint. Inline projections are never behind: 0. */
  lag: number;
  rebuild: { rebuildId: string; version: number; mode: string; phase: string } | null;
}

/** One row per projection (its live version, or the one being rebuilt in place), for operators. */
export async function projectionsOverview(q: Queryable): Promise<ProjectionOverview[]> {
  const rows = await q.query<{
    name: string;
    kind: 'inline' | 'async';
    version: number;
    state: string;
    checkpoint: number;
    gaps: Array<{ since: string }>;
    head: number;
    skips_pending: number;
    oldest_skip_age: number | null;
    rebuild_id: string | null;
    rebuild_version: number | null;
    mode: string | null;
    phase: string | null;
  }>(
    `with head as (select coalesce(max(global_position), 0) as head from events),
     current as (
       select distinct on (name) name, kind, version, state, checkpoint, gaps
         from projections
        where state in ('live', 'rebuilding')
        order by name, (state = 'live') desc, version desc
     )
     select c.name, c.kind, c.version, c.state, c.checkpoint, c.gaps, h.head,
            (select count(*) from projection_skips s where s.projection = c.name)::bigint as skips_pending,
            (select extract(epoch from now() - min(s.recorded_at))::float8 from projection_skips s where s.projection = c.name) as oldest_skip_age,
            r.rebuild_id::text, r.version as rebuild_version, r.mode, r.phase
       from current c cross join head h
       left join rebuilds r on r.projection = c.name and r.phase in ('starting', 'replaying', 'draining')
      order by c.name`,
  );
  const now = Date.now();
  return rows.map((r) => ({
    name: r.name,
    kind: r.kind,
    liveVersion: r.state === 'live' ? r.version : null,
    state: r.state,
    checkpoint: r.checkpoint,
    skipsPending: r.skips_pending,
    oldestSkipAgeSeconds: r.oldest_skip_age === null ? null : Math.round(r.oldest_skip_age),
    openGaps: r.gaps.length,
    oldestGapAgeMs: r.gaps.length === 0 ? null : Math.max(...r.gaps.map((g) => now - Date.parse(g.since))),
    lag: r.kind === 'async' ? Math.max(0, r.head - r.checkpoint) : 0,
    rebuild: r.rebuild_id ? { rebuildId: r.rebuild_id, version: r.rebuild_version!, mode: r.mode!, phase: r.phase! } : null,
  }));
}
