-- ledgerline_skipped_events: the oldest skip rows' events of a projection version, read by
-- position; and ledgerline_drain_batch as in migration 007, reading its batch through it.
--
-- Why: the batch read joined the oldest skip rows to `events`, and the planner sized that join from
-- the skip rows' statistics. Skip rows come and go during a rebuild, so those are often stale:
-- analysed while thousands were pending, they made a hash join that read the whole log for each
-- batch, however few skip rows were left. In the bench's flip-stall scenario that was 200 ms per
-- drain batch of a few hundred rows, so the drain never got the backlog down, and the Flip, which
-- runs this read under the exclusive lock while every writer waits, applied hundreds of rows with
-- a scan of the log (found with log_lock_waits: writers queued 40 ms and more behind it).
-- The events are now read in a LATERAL subquery on the primary key; OFFSET 0 keeps it a subquery
-- (not pulled up into a join the planner could hash), so each skip row costs one index probe and a
-- batch costs what its rows cost, whatever the statistics say and however long the log is.
-- One function for both drains: this file's ledgerline_drain_batch (a projection applied in SQL)
-- and drain.ts's drainBatch (applied in JS, and the range breakage). STABLE and LANGUAGE sql, so
-- it is inlined into the caller's statement and reads with that statement's snapshot.
create function ledgerline_skipped_events(p_projection text, p_version integer, p_batch integer) returns setof events
language sql stable as $$
  select e.*
    from (select s.global_position from projection_skips as s
           where s.projection = p_projection and s.version = p_version
           order by s.global_position
           limit p_batch) as k
   cross join lateral (select * from events as e where e.global_position = k.global_position offset 0) as e
   order by k.global_position
$$;

-- As in 007 but for the read: the same skip rows in the same order, one array, the same apply, the
-- same deletion of exactly those positions.
create or replace function ledgerline_drain_batch(p_projection text, p_version integer, p_batch integer) returns integer
language plpgsql volatile as $$
declare
  v_size integer;
begin
  execute format($q$
    with b as materialized (
      select array(select e from ledgerline_skipped_events($1, $2, $3) as e order by e.global_position) as events
    ),
    -- Applied in position order: the array is ordered by the skip rows' positions.
    applied as materialized (select %I(b.events) from b where cardinality(b.events) > 0),
    positions as materialized (
      select array(select (x).global_position from b, unnest(b.events) as x) as list,
             (b.events[1]).global_position as lo, (b.events[cardinality(b.events)]).global_position as hi
        from b
    ),
    deleted as (
      delete from projection_skips as s
       where s.projection = $1 and s.version = $2
         -- The batch's range as the index condition, "= any" for exactly its positions (007).
         and s.global_position between (select lo from positions) and (select hi from positions)
         and s.global_position = any ((select list from positions)::bigint[])
    )
    -- applied's count is selected, or the CTE would not run.
    select cardinality(b.events), (select count(*) from applied) from b
  $q$, p_projection || '_v' || p_version || '_apply')
  into v_size using p_projection, p_version, p_batch;
  return coalesce(v_size, 0);
end
$$;
