-- The one-event append's body (migration 013) with fewer statements and expressions per call.
-- Nothing else changes: the same locks, the same checks, the same rows written, the same answer
-- for a projection applied in SQL (013's lean one). Every other shape runs ledgerline_append_general
-- (010's body), unchanged.
--
-- What changes:
-- 1. A projection applied in JS now runs the general body too. Its answer carries the states and the
--    event's stream position and time (012's answer, which 010's body gives as well); its append is
--    a transaction of the client's anyway (the client applies in JS after the call), so it is not
--    the one-statement path this body exists for. This body then builds no jsonb of the states.
-- 2. Step 5, the projection's states, reads two values, the `live` version and the array of the
--    `rebuilding` ones, in one aggregate statement, instead of a jsonb array of objects that steps 6
--    and 7 then searched with @> and a jsonpath query. It moves before steps 3 and 4, right after the
--    lock and the timeouts. Both places are after the shared projection lock, and every change of
--    an inline projection's state (Start, Flip, Cancel: migration 007 and cancel.ts) takes that lock
--    exclusively, so no state this call can read changes before it commits: the read gives the
--    same values before the stream row's wait as after it. The read is still a statement of its
--    own after the lock's expression, so it has a snapshot taken after the lock was granted (the
--    function is VOLATILE), which is what closes the flip (DESIGN.md 3.1).
-- 3. The timeouts are set in the lock's expression, after the lock (its operands are evaluated in
--    order): one expression instead of two. The lock's two forms (the breakage's try-lock) stay
--    two branches of an IF, each with the timeouts: plpgsql compiles only the branch it takes, and a
--    CASE choosing the lock inside one expression was compiled whole in every transaction (839,416
--    instructions per append against 833,678 with migration 015, a throwaway count).
-- 4. Steps 3, 4 and 6 for a stream that exists and whose version matches: one statement, the
--    UPDATE of the stream row (013's, its row lock and its version check re-evaluated on the row it
--    waited for) as a CTE that the event's INSERT reads from. The INSERT runs only for the row the
--    UPDATE moved, and draws the position after the UPDATE has given the transaction its xid (a
--    heap write assigns it, and the INSERT's row comes from the UPDATE's), so the xid-before-
--    position order of migration 001 holds without the separate pg_current_xact_id() expression.
--    When the UPDATE finds no row, nothing was written, and 013's path runs: the upsert that creates
--    a new stream or waits for a concurrent creator's row, the re-read on a mismatch, then the
--    event's insert as before.
--
-- Counted as `npm run bench` scenario 5 counts (throwaway runs, with this file in the working
-- tree): 878,653 instructions per append with 013's body, 858,853 with this one (-2.3%). Of the
-- variants tried, the statement of step 5 as two scalar subqueries instead of one aggregate gave
-- 890,954, and steps 3/4 and 6 as two statements (013's) with the rest of this file 885,824: an
-- InitPlan or a statement of plpgsql costs more than an aggregate's or a CTE's setup.

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
  v_live         integer;
  v_rebuilding   integer[];
  v_version      integer;
  v_current      bigint;
  v_lock_timeout text;
  v_row          events;
begin
  -- Every other shape: several events, caller-chosen ids, no inline projection or several, and a
  -- projection applied in JS (its answer carries the states and the event's time: 012's answer).
  if p_ids_from_caller or jsonb_array_length(p_events) <> 1 or jsonb_array_length(p_projections) <> 1
     or not coalesce((p_projections->0->>'sql')::boolean, false) then
    return ledgerline_append_general(p_stream_id, p_events, p_expected, p_projections, p_ids_from_caller,
                                     p_statement_timeout, p_idle_timeout, p_state_in_lock, p_try_lock_no_skip);
  end if;
  v_feed := p_projections->0;
  v_lock_timeout := current_setting('lock_timeout');

  -- 1., 2. and 5.
  if p_state_in_lock then
    -- The breakage: the states read in the statement that waits for the lock (a snapshot from
    -- before the wait).
    with locks as materialized (
      select pg_advisory_xact_lock_shared(projection_lock_key(v_feed->>'name'))
    )
    select max(version) filter (where state = 'live'), array_agg(version) filter (where state = 'rebuilding')
      into v_live, v_rebuilding
      from projections
     where name = v_feed->>'name' and kind = 'inline' and state in ('live', 'rebuilding')
       and (select count(*) from locks) >= 0;
    v_void := set_config('statement_timeout', p_statement_timeout, true)
           || set_config('idle_in_transaction_session_timeout', p_idle_timeout, true)
           || set_config('lock_timeout', p_statement_timeout, true);
  else
    if p_try_lock_no_skip then
      v_void := pg_try_advisory_xact_lock_shared(projection_lock_key(v_feed->>'name'))::text
             || set_config('statement_timeout', p_statement_timeout, true)
             || set_config('idle_in_transaction_session_timeout', p_idle_timeout, true)
             || set_config('lock_timeout', p_statement_timeout, true);
    else
      v_void := pg_advisory_xact_lock_shared(projection_lock_key(v_feed->>'name'))::text
             || set_config('statement_timeout', p_statement_timeout, true)
             || set_config('idle_in_transaction_session_timeout', p_idle_timeout, true)
             || set_config('lock_timeout', p_statement_timeout, true);
    end if;
    select max(p.version) filter (where p.state = 'live'), array_agg(p.version) filter (where p.state = 'rebuilding')
      into v_live, v_rebuilding
      from projections as p
     where p.name = v_feed->>'name' and p.kind = 'inline' and p.state in ('live', 'rebuilding');
  end if;

  -- 3., 4. and 6.
  with moved as (
    update streams as s set version = s.version + 1, updated_at = now()
     where s.stream_id = p_stream_id and (p_expected is null or s.version = p_expected)
    returning s.version
  )
  insert into events (global_position, stream_id, stream_position, event_id, type, data, metadata)
  select nextval('events_global_position_seq'), p_stream_id, moved.version, (p_events->0->>'id')::uuid,
         p_events->0->>'type', p_events->0->'data', p_events->0->'metadata'
    from moved
  returning * into v_row;
  if found then
    v_current := v_row.stream_position - 1;
  else
    insert into streams as s (stream_id, version)
    values (p_stream_id, case when p_expected is null or p_expected = 0 then 1 else 0 end)
    on conflict (stream_id) do update set version = s.version + 1, updated_at = now()
     where p_expected is null or s.version = p_expected
    returning s.version - 1 into v_current;
    if not found or (p_expected is not null and v_current <> p_expected) then
      select s.version into v_current from streams as s where s.stream_id = p_stream_id;
    end if;
    if p_expected is null or p_expected = v_current then
      v_void := pg_current_xact_id()::text;
      insert into events (global_position, stream_id, stream_position, event_id, type, data, metadata)
      values (nextval('events_global_position_seq'), p_stream_id, v_current + 1, (p_events->0->>'id')::uuid,
              p_events->0->>'type', p_events->0->'data', p_events->0->'metadata')
      returning * into v_row;
    end if;
  end if;

  if v_row.global_position is not null then
    -- 6. (9a, 9b)
    if v_rebuilding is not null or random() < 0.02 then
      if not p_try_lock_no_skip then
        insert into projection_skips (projection, version, global_position)
        select v_feed->>'name', r, v_row.global_position
          from unnest(v_rebuilding) as r
         where v_feed->'types' ? v_row.type;
      end if;
      if random() < 0.02 then
        foreach v_version in array coalesce(v_rebuilding, '{}') loop
          begin
            v_void := ledgerline_apply_version(v_feed->>'name', v_version, array[null::events])::text;
            if v_feed ? 'partial' then
              v_void := ledgerline_merge_version(v_feed->>'name', v_version, null::jsonb, null::events)::text;
            end if;
          exception when others then
            null;
          end;
        end loop;
      end if;
    end if;

    -- 7.
    if v_live is not null and v_feed->'types' ? v_row.type
       and not (v_feed ? 'partial' and ledgerline_merge_version(v_feed->>'name', v_live, v_feed->'partial', v_row)) then
      v_void := ledgerline_apply_version(v_feed->>'name', v_live, array[v_row])::text;
    end if;
  elsif v_current = 0 then
    -- 8. (migration 004)
    delete from streams as s where s.stream_id = p_stream_id and s.version = 0;
  end if;

  v_void := set_config('lock_timeout', v_lock_timeout, true);
  return ('{"current":' || v_current || ',"stored":[],"inserted":['
          || coalesce('{"global_position":' || v_row.global_position || '}', '') || ']}')::jsonb;
end
$$;
