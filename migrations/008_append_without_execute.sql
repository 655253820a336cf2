-- ledgerline_append as in migration 005, doing the same steps with less server work per call, and
-- a dispatch function that names each projection version's apply function in its own code.
--
-- Why: the append ran at 36–46% of the raw single-statement baseline (`npm run bench`, scenario 1),
-- and the CPU went to PostgreSQL's per-statement machinery, not to the writes: every statement a
-- plpgsql function runs through SPI pays for its plan's executor start (expressions compiled again,
-- nodes initialised) and a snapshot. A throwaway per-statement timing (pg_stat_statements, one
-- backend) put the apply's call at 210 µs of the 780 µs call, of which the upsert itself was 110:
-- the rest was EXECUTE parsing and planning `select <fn>($1)` on every append, and the query that
-- looked up which function to call. What changes, and what does not:
-- 1. The shared projection locks and the timeouts are plpgsql assignments (simple expressions,
--    evaluated without starting an executor), not PERFORM statements. Same locks, same order.
-- 2. A one-event append inserts with VALUES and RETURNING INTO, not through jsonb_array_elements,
--    an ordered CTE and two aggregates. Its position is drawn by nextval after
--    pg_current_xact_id(): the order next_global_position() keeps (migration 001), stated here
--    because the default is not used. Appends of several events insert as before.
-- 3. Each `live` version applies through ledgerline_apply_version(name, version, events), whose
--    body names every version's function in a static call (planned once per connection), with
--    EXECUTE kept as the fallback for a version it does not name. So the dispatch can be stale and
--    still right: it is rewritten by ledgerline_refresh_apply_version() when a version's function
--    is created (ensureProjection, Start), and a version it misses costs only the EXECUTE.
--    Which versions are live or rebuilding is still read per append, after the locks (step 5 of
--    003); the dispatch holds no state, only names.
-- 4. The states and projections are walked with integer loops over the jsonb arrays, not a query
--    joining them.
-- Step 9b (migration 005) calls the rebuilding version's apply through the same dispatch, so that
-- the dispatch's branch is also planned before the Flip.

-- Rewrites ledgerline_apply_version with one branch per function `<name>_v<version>_apply(events[])`
-- in the current schema (the last `_v<digits>_apply` of its name gives the version, so a projection
-- name may itself contain `_v1`). Read from the catalog, not from `projections`: Start creates a new
-- version's function before the locked call that adds its row. Serialised by an advisory lock of its
-- own (two concurrent CREATE OR REPLACE of one function fail with "tuple concurrently updated");
-- appends never wait for it: a function is not locked by its callers, and each connection picks up
-- the new body at its next call. A dropped version's branch stays until the next rewrite, and is
-- never taken: only live versions, and rebuilding ones in step 9b, are dispatched.
create or replace function ledgerline_refresh_apply_version() returns void
language plpgsql volatile as $refresh$
declare
  v_branches text;
  v_body     text;
begin
  perform pg_advisory_xact_lock(hashtextextended('ledgerline:apply-version', 0));
  select string_agg(format('if p_name = %L and p_version = %s then v_void := %I(p_events)::text; return; end if;',
                           m[1], m[2]::int, f.proname), e'\n  ' order by m[1], m[2]::int)
    into v_branches
    from pg_proc as f
   cross join lateral regexp_match(f.proname, '^(.+)_v([0-9]{1,9})_apply$') as m
   where m is not null
     and f.pronamespace = current_schema()::regnamespace
     and f.pronargs = 1 and f.proargtypes[0] = 'events[]'::regtype;
  v_body := format($f$
declare
  v_void text;
begin
  %s
  execute format('select %%I($1)', p_name || '_v' || p_version || '_apply') using p_events;
end
$f$, coalesce(v_branches, ''));
  -- Unchanged (ensureProjection at every deploy and start, an in-place Start): left alone, so no
  -- connection has to compile it again. Created by the first call (this migration's, below).
  if v_body = (select prosrc from pg_proc where oid = to_regprocedure('ledgerline_apply_version(text, integer, events[])')) then
    return;
  end if;
  execute format($f$
create or replace function ledgerline_apply_version(p_name text, p_version integer, p_events events[])
returns void language plpgsql volatile as %s$f$, quote_literal(v_body));
end
$refresh$;

select ledgerline_refresh_apply_version();

create or replace function ledgerline_append(
  p_stream_id         text,
  p_events            jsonb,   -- [{id, type, data, metadata}]
  p_expected          bigint,  -- null: any version
  p_projections       jsonb,   -- [{name, types, sql}] of the inline projections these events feed
  p_ids_from_caller   boolean,
  p_statement_timeout text,
  p_idle_timeout      text,
  p_state_in_lock     boolean,
  p_try_lock_no_skip  boolean
) returns jsonb
language plpgsql volatile parallel unsafe
-- Generic plans (migration 005 says why).
set plan_cache_mode = force_generic_plan
as $$
declare
  v_names        text[];
  v_name         text;
  v_void         text;
  v_states       jsonb := '[]'::jsonb;
  v_current      bigint;
  v_lock_timeout text;
  v_stored       jsonb := '[]'::jsonb;
  v_inserted     jsonb := '[]'::jsonb;
  v_count        bigint := jsonb_array_length(p_events);
  v_rows         events[];
  v_row          events;
  v_event        jsonb;
  v_state        jsonb;
  v_feed         jsonb;
  v_events       events[];
  v_apply        record;
begin
  if jsonb_array_length(p_projections) = 1 then
    v_names := array[p_projections->0->>'name'];
  else
    v_names := array(select p->>'name' from jsonb_array_elements(p_projections) as p order by 1);
  end if;

  if p_state_in_lock then
    -- The breakage: the states read in the statement that waits for the locks (a snapshot from
    -- before the wait).
    with locks as materialized (
      select pg_advisory_xact_lock_shared(projection_lock_key(n)) from unnest(v_names) as n
    )
    select coalesce(jsonb_agg(jsonb_build_object('name', name, 'version', version, 'state', state)), '[]'::jsonb)
      into v_states
      from projections
     where name = any (v_names) and kind = 'inline' and state in ('live', 'rebuilding')
       and (select count(*) from locks) >= 0;
  elsif p_try_lock_no_skip then
    perform pg_try_advisory_xact_lock_shared(projection_lock_key(n)) from unnest(v_names) as n;
  else
    -- 1. In name order (v_names is sorted), one at a time.
    foreach v_name in array v_names loop
      v_void := pg_advisory_xact_lock_shared(projection_lock_key(v_name))::text;
    end loop;
  end if;

  -- 2.
  v_void := set_config('statement_timeout', p_statement_timeout, true);
  v_void := set_config('idle_in_transaction_session_timeout', p_idle_timeout, true);
  v_lock_timeout := current_setting('lock_timeout');
  v_void := set_config('lock_timeout', p_statement_timeout, true);

  -- 3. and 4., as in migration 003.
  if p_ids_from_caller then
    insert into streams (stream_id, version) values (p_stream_id, 0)
    on conflict (stream_id) do update set version = streams.version where false;
    select s.version into v_current from streams as s where s.stream_id = p_stream_id;
    select coalesce(jsonb_agg(jsonb_build_object(
             'event_id', e.event_id::text, 'stream_id', e.stream_id, 'stream_position', e.stream_position,
             'global_position', e.global_position, 'type', e.type, 'data', e.data) order by e.global_position), '[]'::jsonb)
      into v_stored
      from events as e
     where e.event_id in (select (x->>'id')::uuid from jsonb_array_elements(p_events) as x);
    if jsonb_array_length(v_stored) = 0 and (p_expected is null or p_expected = v_current) then
      update streams as s set version = v_current + v_count, updated_at = now() where s.stream_id = p_stream_id;
    end if;
  else
    insert into streams as s (stream_id, version)
    values (p_stream_id, case when p_expected is null or p_expected = 0 then v_count else 0 end)
    on conflict (stream_id) do update set version = s.version + v_count, updated_at = now()
     where p_expected is null or s.version = p_expected
    returning s.version - v_count into v_current;
    if not found or (p_expected is not null and v_current <> p_expected) then
      select s.version into v_current from streams as s where s.stream_id = p_stream_id;
    end if;
  end if;

  if jsonb_array_length(v_stored) = 0 and (p_expected is null or p_expected = v_current) then
    -- 5.
    if not p_state_in_lock and cardinality(v_names) > 0 then
      select coalesce(jsonb_agg(jsonb_build_object('name', p.name, 'version', p.version, 'state', p.state)), '[]'::jsonb)
        into v_states
        from projections as p
       where p.name = any (v_names) and p.kind = 'inline' and p.state in ('live', 'rebuilding');
    end if;

    -- 6. The events.
    if v_count = 1 then
      -- The transaction's xid before its position (migration 001, next_global_position). The
      -- stream upsert above has already written, so this assigns nothing new; it keeps the order
      -- independent of that.
      v_void := pg_current_xact_id()::text;
      v_event := p_events->0;
      insert into events (global_position, stream_id, stream_position, event_id, type, data, metadata)
      values (nextval('events_global_position_seq'), p_stream_id, v_current + 1, (v_event->>'id')::uuid,
              v_event->>'type', v_event->'data', v_event->'metadata')
      returning * into v_row;
      v_rows := array[v_row];
      v_inserted := jsonb_build_array(jsonb_build_object(
        'global_position', v_row.global_position, 'stream_position', v_row.stream_position,
        'recorded_at', to_char(v_row.recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')));
    else
      with ins as (
        insert into events (stream_id, stream_position, event_id, type, data, metadata)
        select p_stream_id, v_current + t.ord, (t.e->>'id')::uuid, t.e->>'type', t.e->'data', t.e->'metadata'
          from jsonb_array_elements(p_events) with ordinality as t(e, ord)
         order by t.ord
        returning *
      )
      select coalesce(jsonb_agg(jsonb_build_object(
               'global_position', ins.global_position, 'stream_position', ins.stream_position,
               'recorded_at', to_char(ins.recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
               order by ins.stream_position), '[]'::jsonb)
             , array_agg(row(ins.*)::events order by ins.stream_position)
        into v_inserted, v_rows
        from ins;
    end if;

    -- 6. The skip rows, and 9a (migration 005).
    if not p_try_lock_no_skip and (v_states @> '[{"state": "rebuilding"}]' or random() < 0.02) then
      insert into projection_skips (projection, version, global_position)
      select st->>'name', (st->>'version')::int, r.global_position
        from unnest(v_rows) as r
        join jsonb_array_elements(v_states) as st on st->>'state' = 'rebuilding'
        join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
       where p->'types' ? r.type;
    end if;

    -- 9b (migration 005), through the dispatch.
    if v_states @> '[{"state": "rebuilding"}]' and random() < 0.02 then
      for v_apply in
        select st->>'name' as name, (st->>'version')::int as version
          from jsonb_array_elements(v_states) as st
          join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
         where st->>'state' = 'rebuilding' and coalesce((p->>'sql')::boolean, false)
      loop
        begin
          v_void := ledgerline_apply_version(v_apply.name, v_apply.version, array[null::events])::text;
        exception when others then
          null;
        end;
      end loop;
    end if;

    -- 7. Each `live` version of a projection that applies in SQL applies the rows of the types it
    --    handles (migration 004), through the dispatch.
    for i in 0 .. jsonb_array_length(v_states) - 1 loop
      v_state := v_states->i;
      continue when v_state->>'state' <> 'live';
      for j in 0 .. jsonb_array_length(p_projections) - 1 loop
        v_feed := p_projections->j;
        continue when v_feed->>'name' <> v_state->>'name' or not coalesce((v_feed->>'sql')::boolean, false);
        if v_count = 1 then
          v_events := case when v_feed->'types' ? v_row.type then v_rows else '{}'::events[] end;
        else
          v_events := array(select r from unnest(v_rows) as r where v_feed->'types' ? r.type order by r.stream_position);
        end if;
        if cardinality(v_events) > 0 then
          v_void := ledgerline_apply_version(v_state->>'name', (v_state->>'version')::int, v_events)::text;
        end if;
      end loop;
    end loop;
  elsif v_current = 0 then
    -- 8. (migration 004)
    delete from streams as s where s.stream_id = p_stream_id and s.version = 0;
  end if;

  v_void := set_config('lock_timeout', v_lock_timeout, true);
  return jsonb_build_object('current', v_current, 'stored', v_stored, 'inserted', v_inserted, 'states', v_states);
end
$$;
