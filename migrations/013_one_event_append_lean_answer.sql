-- The one-event append's body (migration 012) with a smaller answer and two cheaper statements.
-- Nothing else changes: the same locks in the same order, the same reads after them, the same
-- rows written; every other shape still runs ledgerline_append_general (010's body), unchanged.
--
-- What changes:
-- 1. The answer, when the feed applies in SQL: {current, stored: [], inserted: [{global_position}]},
--    built as text. The client (appendToStream) reads the states and each event's stream position
--    and recording time only for a projection applied in JS (to apply it there); for one applied
--    in SQL it reads the version and the positions alone. The answer's jsonb_build_object calls
--    (each categorises its arguments' types on every call), the states and the to_char of the
--    time were about 4% of the append's instructions (below). A feed applied in JS gets 012's answer, unchanged,
--    so code deployed before this file reads what it expects, and so does code deployed after it
--    (it reads `states` only when it applies in JS, and takes a missing list as none).
-- 2. Steps 3 and 4: an UPDATE of the stream row first, the upsert only when it finds no row. The
--    UPDATE takes the same row lock as the upsert's DO UPDATE and re-checks the expected version
--    on the row it waited for (READ COMMITTED re-evaluates its WHERE on the newest version, as the
--    upsert's WHERE does), so appends to one stream still serialise on that lock and a stale
--    expected version still writes nothing. When it finds no row (a new stream, or a version that
--    does not match), the upsert runs as in 012: it creates a new stream, or waits for a concurrent
--    creator's row and checks the version on it, and a mismatch re-reads the version as before.
--    An existing stream, the common case, no longer pays the speculative insertion's index probe.
-- 3. Step 5 builds each state with to_jsonb of a row (name, version, state) instead of
--    jsonb_build_object: the same objects.
--
-- Counted as `npm run bench` scenario 5 counts (throwaway runs of it with this file, before it was
-- committed): 936,266 instructions per append with 012's body; 900,889 with the smaller answer
-- alone built by jsonb_build_object; 878,559 with all three (-6.2%). The committed scenario
-- (bench/RESULTS.md) counts this body.

create or replace function ledgerline_append(
  p_stream_id         text,
  p_events            jsonb,   -- [{id, type, data, metadata}]
  p_expected          bigint,  -- null: any version
  p_projections       jsonb,   -- [{name, types, sql, partial?}] of the inline projections these events feed
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
  v_void         text;
  v_feed         jsonb;
  v_states       jsonb;
  v_state        jsonb;
  v_current      bigint;
  v_lock_timeout text;
  v_row          events;
begin
  -- Every other shape: several events, caller-chosen ids (their stored-id check needs its own
  -- statements), no inline projection or several (their locks, in name order).
  if p_ids_from_caller or jsonb_array_length(p_events) <> 1 or jsonb_array_length(p_projections) <> 1 then
    return ledgerline_append_general(p_stream_id, p_events, p_expected, p_projections, p_ids_from_caller,
                                     p_statement_timeout, p_idle_timeout, p_state_in_lock, p_try_lock_no_skip);
  end if;
  v_feed := p_projections->0;
  v_lock_timeout := current_setting('lock_timeout');

  -- 1.
  if p_state_in_lock or p_try_lock_no_skip then
    if p_state_in_lock then
      -- The breakage: the states read in the statement that waits for the lock (a snapshot from
      -- before the wait).
      with locks as materialized (
        select pg_advisory_xact_lock_shared(projection_lock_key(v_feed->>'name'))
      )
      select coalesce(jsonb_agg(jsonb_build_object('name', name, 'version', version, 'state', state)), '[]'::jsonb)
        into v_states
        from projections
       where name = v_feed->>'name' and kind = 'inline' and state in ('live', 'rebuilding')
         and (select count(*) from locks) >= 0;
    else
      v_void := pg_try_advisory_xact_lock_shared(projection_lock_key(v_feed->>'name'))::text;
    end if;
  else
    v_void := pg_advisory_xact_lock_shared(projection_lock_key(v_feed->>'name'))::text;
  end if;

  -- 2.
  v_void := set_config('statement_timeout', p_statement_timeout, true)
         || set_config('idle_in_transaction_session_timeout', p_idle_timeout, true)
         || set_config('lock_timeout', p_statement_timeout, true);

  -- 3. and 4. The UPDATE first; the upsert of 012 only when it finds no row (the header says why
  --    the lock and the version check are the same).
  update streams as s set version = s.version + 1, updated_at = now()
   where s.stream_id = p_stream_id and (p_expected is null or s.version = p_expected)
  returning s.version - 1 into v_current;
  if not found then
    insert into streams as s (stream_id, version)
    values (p_stream_id, case when p_expected is null or p_expected = 0 then 1 else 0 end)
    on conflict (stream_id) do update set version = s.version + 1, updated_at = now()
     where p_expected is null or s.version = p_expected
    returning s.version - 1 into v_current;
    if not found or (p_expected is not null and v_current <> p_expected) then
      select s.version into v_current from streams as s where s.stream_id = p_stream_id;
    end if;
  end if;

  if p_expected is null or p_expected = v_current then
    -- 5.
    if not p_state_in_lock then
      v_states := to_jsonb(array(
        select to_jsonb(p)
          from (select p.name, p.version, p.state from projections as p
                 where p.name = v_feed->>'name' and p.kind = 'inline' and p.state in ('live', 'rebuilding')) as p));
    end if;

    -- 6.
    v_void := pg_current_xact_id()::text;
    insert into events (global_position, stream_id, stream_position, event_id, type, data, metadata)
    values (nextval('events_global_position_seq'), p_stream_id, v_current + 1, (p_events->0->>'id')::uuid,
            p_events->0->>'type', p_events->0->'data', p_events->0->'metadata')
    returning * into v_row;

    -- 6. A skip row per `rebuilding` version; one append in 50, the same statement with nothing
    --    to insert when none is, so that it is planned in each connection before a rebuild starts
    --    (9a). 9b: one append in 50 of those, the rebuilding version's apply and merge with nothing.
    if v_states @> '[{"state": "rebuilding"}]' or random() < 0.02 then
      if not p_try_lock_no_skip then
        insert into projection_skips (projection, version, global_position)
        select st->>'name', (st->>'version')::int, v_row.global_position
          from jsonb_array_elements(v_states) as st
         where st->>'state' = 'rebuilding' and v_feed->'types' ? v_row.type;
      end if;
      if random() < 0.02 and coalesce((v_feed->>'sql')::boolean, false) then
        for v_state in select st from jsonb_array_elements(v_states) as st where st->>'state' = 'rebuilding' loop
          begin
            v_void := ledgerline_apply_version(v_state->>'name', (v_state->>'version')::int, array[null::events])::text;
            if v_feed ? 'partial' then
              v_void := ledgerline_merge_version(v_state->>'name', (v_state->>'version')::int, null::jsonb, null::events)::text;
            end if;
          exception when others then
            null;
          end;
        end loop;
      end if;
    end if;

    -- 7. The `live` version, if any (at most one: projections_one_live), when it applies in SQL and
    --    handles the type: it merges the writer's document when it accepts it, else applies.
    v_state := jsonb_path_query_first(v_states, '$[*] ? (@.state == "live")');
    if v_state is not null and coalesce((v_feed->>'sql')::boolean, false) and v_feed->'types' ? v_row.type
       and not (v_feed ? 'partial'
                and ledgerline_merge_version(v_state->>'name', (v_state->>'version')::int, v_feed->'partial', v_row)) then
      v_void := ledgerline_apply_version(v_state->>'name', (v_state->>'version')::int, array[v_row])::text;
    end if;
  elsif v_current = 0 then
    -- 8. (migration 004)
    delete from streams as s where s.stream_id = p_stream_id and s.version = 0;
  end if;

  v_void := set_config('lock_timeout', v_lock_timeout, true);
  -- The answer: the lean one when the feed applies in SQL (the header says why), else 012's.
  if coalesce((v_feed->>'sql')::boolean, false) then
    return ('{"current":' || v_current || ',"stored":[],"inserted":['
            || coalesce('{"global_position":' || v_row.global_position || '}', '') || ']}')::jsonb;
  end if;
  return jsonb_build_object(
    'current', v_current,
    'stored', '[]'::jsonb,
    'inserted', case when v_row.global_position is null then '[]'::jsonb else jsonb_build_array(jsonb_build_object(
      'global_position', v_row.global_position, 'stream_position', v_row.stream_position,
      'recorded_at', to_char(v_row.recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))) end,
    'states', coalesce(v_states, '[]'::jsonb));
end
$$;
