-- The append's common shape, one event feeding one inline projection with server-generated ids,
-- gets a body of its own that does the same steps with fewer plpgsql expressions; every other shape
-- runs migration 010's body, unchanged, renamed ledgerline_append_general.
--
-- Why: plpgsql compiles each expression it evaluates again in every transaction (its simple
-- expressions live in a per-transaction executor state), and an append is a transaction of its
-- own: 010's body evaluated about forty expressions per one-event append (loops over the states
-- and the feeds, flags for the shapes it also serves, the defaults of its variables). With 32
-- writers on two cores that compiling, and the catalog lookups it makes, was the largest part of
-- the server's profile (perf, cpu-clock: hash_search_with_hash_value, SearchCatCacheInternal,
-- expr_setup_walker, ExecInitExprRec first). Counted by callgrind as `npm run bench` scenario 5
-- counts (after migration 011, on empty tables; a throwaway run of that method, before this file
-- was committed): 1,028,334 instructions per append with 010's body, 962,987 with this one's first
-- version (-6.4%). The committed scenario (bench/RESULTS.md, on a seeded log) counts this body.
--
-- What is the same, step by step (003 explains each step, 005 step 9, 010 the merge):
-- 1. The shared advisory lock of the one projection, taken alone in its own expression, before
--    anything else is read. Its wait holds nothing.
-- 2. The transaction-local timeouts, after the lock; lock_timeout is restored before returning.
-- 3./4. The stream row: the same upsert as 010 for one event (the lock on the row, the version
--    check and move in one statement), and the same re-read on a mismatch.
-- 5. The projection's states, in a statement of its own after the lock (a fresh snapshot: the
--    function is VOLATILE), as 010. An array subquery instead of jsonb_agg: the same array, without
--    an aggregate's per-statement setup.
-- 6. The event, its xid taken before its position (migration 001), as 010.
-- 6. (9a, 9b) While a version rebuilds, and at one append in 50 of the others, the same steps as
--    010 for one feed: a skip row per `rebuilding` version (with nothing to insert when none is, so
--    that the statement is planned in each connection before a rebuild starts), and one append in
--    50 of those the rebuilding version's apply and merge with nothing.
-- 7. The `live` version (at most one) merges the writer's document or applies the event, as 010's
--    loop does; the loop over every state and feed is what this body does without.
-- The breakages of functions/core/breakages.ts switch the same steps as in 010's body, so the
-- fault-injection suite breaks the body that production runs for its appends.
-- The result is the same object: {current, stored: [], inserted, states}.

alter function ledgerline_append(text, jsonb, bigint, jsonb, boolean, text, text, boolean, boolean)
  rename to ledgerline_append_general;

create function ledgerline_append(
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

  -- 3. and 4.
  insert into streams as s (stream_id, version)
  values (p_stream_id, case when p_expected is null or p_expected = 0 then 1 else 0 end)
  on conflict (stream_id) do update set version = s.version + 1, updated_at = now()
   where p_expected is null or s.version = p_expected
  returning s.version - 1 into v_current;
  if not found or (p_expected is not null and v_current <> p_expected) then
    select s.version into v_current from streams as s where s.stream_id = p_stream_id;
  end if;

  if p_expected is null or p_expected = v_current then
    -- 5.
    if not p_state_in_lock then
      v_states := to_jsonb(array(
        select jsonb_build_object('name', p.name, 'version', p.version, 'state', p.state)
          from projections as p
         where p.name = v_feed->>'name' and p.kind = 'inline' and p.state in ('live', 'rebuilding')));
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
  return jsonb_build_object(
    'current', v_current,
    'stored', '[]'::jsonb,
    'inserted', case when v_row.global_position is null then '[]'::jsonb else jsonb_build_array(jsonb_build_object(
      'global_position', v_row.global_position, 'stream_position', v_row.stream_position,
      'recorded_at', to_char(v_row.recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))) end,
    'states', coalesce(v_states, '[]'::jsonb));
end
$$;
