-- Start's locked part truncates only the tables it is given: an in-place rebuild's (the live
-- tables, which appends write); a blue-green Start gives none, because its first transaction,
-- before the lock, created the new version's tables and emptied any that held rows (start.ts).
--
-- Why: TRUNCATE gives each table and each of its indexes a new file and builds the empty index
-- again, and on PostgreSQL 16 a btree build of a WAL-logged index ends with an fsync of the new
-- file (nbtsort.c, smgrimmedsync), so the truncate of `order_summary_vN` held the exclusive
-- projection lock, and so every writer of the projection, through two file creations and an fsync:
-- 3 to 10 ms of the locked call's 4 to 14 ms on the bench's machine, and on a busy disk an fsync
-- takes longer. Measured with throwaway timings (clock_timestamp() around the lock and the
-- truncate inside this function, `npm run bench -- --scenarios flip`, 6 Starts per run): the
-- server's work under the lock fell from 3.6–14.1 ms to 0.3–2.6 ms.
--
-- Why it is safe (blue-green): nothing writes a version's tables before its Start commits. An
-- append writes a version's table only when the version is `live` and a skip row when it is
-- `rebuilding`; the new version is neither until this call marks it `rebuilding` under the lock
-- (the projections row is inserted here). Replay and drain of this rebuild write only after this
-- call moved the phase to `replaying`, and every step is fenced by the rebuild row's token (a
-- takeover or Cancel stops the older worker's steps). So between the emptying before the lock and
-- the lock, no row can appear in the new version's tables, and the version starts as empty as a
-- truncate under the lock would leave it. The skip rows are still deleted here (an index probe,
-- no file work).
create or replace function ledgerline_rebuild_start(
  p_lease        jsonb,
  p_kind         text,
  p_tables       text[]
) returns text
language plpgsql volatile as $$
declare
  v rebuilds := ledgerline_rebuild_begin(p_lease);
begin
  if v.phase <> 'starting' then
    return v.phase;
  end if;
  perform pg_advisory_xact_lock(projection_lock_key(v.projection));
  insert into projections (name, version, kind, state)
  values (v.projection, v.version, p_kind, 'rebuilding')
  on conflict (name, version) do update
    set state = 'rebuilding', checkpoint = 0, gaps = '[]'::jsonb, lease_owner = null, lease_expires_at = null,
        updated_at = now();
  if cardinality(p_tables) > 0 then
    execute 'truncate ' || (select string_agg(format('%I', t), ', ') from unnest(p_tables) as t);
  end if;
  delete from projection_skips where projection = v.projection and version = v.version;
  update rebuilds
     set phase = 'replaying', checkpoint = 0, events_replayed = 0, skips_drained = 0, updated_at = now(),
         target_position = (select coalesce(max(global_position), 0) from events)
   where rebuild_id = v.rebuild_id;
  return 'replaying';
end
$$;
