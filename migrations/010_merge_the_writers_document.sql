-- The append merges a document its writer computed, when the writer runs the code of the live
-- version's functions: ledgerline_append as in migration 008, with step 7 (and step 9b) changed.
--
-- Why: computing the document is the append's largest server cost after the protocol's own
-- statements. A throwaway measurement (pgbench against the embedded server, 8 clients, one-event
-- appends, median of 3 runs of 6 s) gave 3,039 calls/s for this function as in 008, 4,060 when its
-- apply was replaced by the upsert of a document given to it, and 6,557 statements/s for the raw
-- baseline of `npm run bench` (whose client computes the document, as the writer does here).
--
-- What changes:
-- 1. A feed in p_projections may carry `partial`, the document its writer computed for a one-event
--    append (ProjectionDefinition.inlinePartial, functions/core/projections/definition.ts). Step 7
--    then calls ledgerline_merge_version(name, version, partial, row) for each `live` version, which
--    calls that version's `<table>_merge(jsonb, events)`. It returns false, having written nothing,
--    when the version has no merge function the dispatch names, or when the partial comes from
--    other code than the one that made the version's functions (the merge function compares the
--    partial's `code` with its own): step 7 then applies the event through ledgerline_apply_version
--    as before. A version's documents are computed by one code whichever side computes them.
-- 2. Step 9b also calls the merge of a `rebuilding` version with a null partial, now and then, so
--    that its insert is planned in each connection before the Flip, as the apply is (migration 005).
-- Nothing else changes: the same locks in the same order, the same reads after them, the same
-- statements for the stream, the events and the skip rows. Which versions are live or rebuilding,
-- and so whether a merge or an apply runs at all, is decided as before.

-- Rewrites ledgerline_merge_version with one branch per function `<name>_v<version>_merge(jsonb,
-- events)` in the current schema, as ledgerline_refresh_apply_version (migration 008) does for the
-- apply functions, and for the same reasons. A version it does not name is not merged (false), so
-- a stale dispatch costs only the merge.
create or replace function ledgerline_refresh_merge_version() returns void
language plpgsql volatile as $refresh$
declare
  v_branches text;
  v_body     text;
begin
  perform pg_advisory_xact_lock(hashtextextended('ledgerline:merge-version', 0));
  select string_agg(format('if p_name = %L and p_version = %s then return %I(p_partial, p_event); end if;',
                           m[1], m[2]::int, f.proname), e'\n  ' order by m[1], m[2]::int)
    into v_branches
    from pg_proc as f
   cross join lateral regexp_match(f.proname, '^(.+)_v([0-9]{1,9})_merge$') as m
   where m is not null
     and f.pronamespace = current_schema()::regnamespace
     and f.pronargs = 2 and f.proargtypes[0] = 'jsonb'::regtype and f.proargtypes[1] = 'events'::regtype;
  v_body := format($f$
begin
  %s
  return false;
end
$f$, coalesce(v_branches, ''));
  if v_body = (select prosrc from pg_proc where oid = to_regprocedure('ledgerline_merge_version(text, integer, jsonb, events)')) then
    return;
  end if;
  execute format($f$
create or replace function ledgerline_merge_version(p_name text, p_version integer, p_partial jsonb, p_event events)
returns boolean language plpgsql volatile as %s$f$, quote_literal(v_body));
end
$refresh$;

select ledgerline_refresh_merge_version();

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

    -- 9b (migration 005), through the dispatches: the apply, and the merge when the writer sends
    --    partials (change 2).
    if v_states @> '[{"state": "rebuilding"}]' and random() < 0.02 then
      for v_apply in
        select st->>'name' as name, (st->>'version')::int as version, p ? 'partial' as merges
          from jsonb_array_elements(v_states) as st
          join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
         where st->>'state' = 'rebuilding' and coalesce((p->>'sql')::boolean, false)
      loop
        begin
          v_void := ledgerline_apply_version(v_apply.name, v_apply.version, array[null::events])::text;
          if v_apply.merges then
            v_void := ledgerline_merge_version(v_apply.name, v_apply.version, null::jsonb, null::events)::text;
          end if;
        exception when others then
          null;
        end;
      end loop;
    end if;

    -- 7. Each `live` version of a projection that applies in SQL applies the rows of the types it
    --    handles (migration 004), through the dispatch; for one event, the version merges its
    --    writer's document instead when it accepts it (change 1).
    for i in 0 .. jsonb_array_length(v_states) - 1 loop
      v_state := v_states->i;
      continue when v_state->>'state' <> 'live';
      for j in 0 .. jsonb_array_length(p_projections) - 1 loop
        v_feed := p_projections->j;
        continue when v_feed->>'name' <> v_state->>'name' or not coalesce((v_feed->>'sql')::boolean, false);
        if v_count = 1 then
          continue when not v_feed->'types' ? v_row.type;
          if v_feed ? 'partial' then
            continue when ledgerline_merge_version(v_state->>'name', (v_state->>'version')::int, v_feed->'partial', v_row);
          end if;
          v_events := v_rows;
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
