-- ledgerline_append as in migration 004, with step 9: it prepares, ahead of time and a little at a
-- time, the two statements that every append starts to run at once when a rebuild starts or flips.
--
-- Why: plpgsql plans a statement in a connection the first time that connection runs it. The
-- skip-row insert first runs when a rebuild starts, and a new version's apply function is first
-- compiled and planned when it flips to live; each took about 1 ms in every connection (a
-- throwaway timing, not a bench figure). Start and Flip hold the exclusive projection lock, so every
-- writer is queued behind it and all of them pay that first run together the moment it is released:
-- with 32 writers on two cores, tens of milliseconds of compiling and planning on top of the wait
-- (`npm run bench`, scenario 3, shows the stall). Done at random appends beforehand, in each
-- connection, the same work is spread over time and out of the queue:
-- 9a. the skip-row insert, with nothing to insert, at about one append in 50 while no rebuild runs;
-- 9b. the `rebuilding` version's apply function, with one null event, at about one append in 50
--     while the rebuild replays (so before it flips).
-- The cached plans live as long as the connection (a table's new statistics may replan them once).
-- Cost: one append in 50 runs one more statement that writes nothing.

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
-- Generic plans, for its own statements and the apply it calls: with the default, plpgsql kept
-- planning some of them per call (about 60 µs of 330 per append, measured in a DO loop). A generic
-- plan is remade when ANALYZE changes a table's statistics, so it follows the log's growth. The
-- timeouts it sets with set_config(…, true) still hold for the rest of the transaction: a SET clause
-- restores only its own setting.
set plan_cache_mode = force_generic_plan
as $$
declare
  v_names        text[] := array(select p->>'name' from jsonb_array_elements(p_projections) as p order by 1);
  v_states       jsonb := '[]'::jsonb;
  v_current      bigint;
  v_lock_timeout text;
  v_stored       jsonb := '[]'::jsonb;
  v_inserted     jsonb := '[]'::jsonb;
  v_count        bigint := jsonb_array_length(p_events);
  v_rows         events[];
  v_apply        record;
begin
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
    perform pg_advisory_xact_lock_shared(projection_lock_key(n)) from unnest(v_names) as n;
  end if;

  perform set_config('statement_timeout', p_statement_timeout, true),
          set_config('idle_in_transaction_session_timeout', p_idle_timeout, true);
  v_lock_timeout := current_setting('lock_timeout');
  perform set_config('lock_timeout', p_statement_timeout, true);

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
    -- Lock and move the version in one statement: the conflict path locks the row after waiting
    -- for its holder and compares against the newest committed version, not the snapshot's. A new
    -- stream whose expected version is not 0 is created at 0 and reported as a mismatch below.
    insert into streams as s (stream_id, version)
    values (p_stream_id, case when p_expected is null or p_expected = 0 then v_count else 0 end)
    on conflict (stream_id) do update set version = s.version + v_count, updated_at = now()
     where p_expected is null or s.version = p_expected
    returning s.version - v_count into v_current;
    if not found or (p_expected is not null and v_current <> p_expected) then
      -- No row moved (or a new stream expected elsewhere): read the version under the row lock the
      -- conflict path took (a new snapshot: it sees the holder's commit).
      select s.version into v_current from streams as s where s.stream_id = p_stream_id;
    end if;
  end if;

  -- Insert only when no id is stored already and the expected version holds; otherwise the caller
  -- answers from `stored` (a duplicate or a conflict) or `current` (a version conflict).
  if jsonb_array_length(v_stored) = 0 and (p_expected is null or p_expected = v_current) then
    -- An append that feeds no inline projection has no states to read.
    if not p_state_in_lock and cardinality(v_names) > 0 then
      select coalesce(jsonb_agg(jsonb_build_object('name', p.name, 'version', p.version, 'state', p.state)), '[]'::jsonb)
        into v_states
        from projections as p
       where p.name = any (v_names) and p.kind = 'inline' and p.state in ('live', 'rebuilding');
    end if;

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

    -- A skip row per event for every `rebuilding` version (step 6 of migration 003, now a statement
    -- of its own that runs only while a rebuild is on): in this transaction, so a skip row exists
    -- iff its event commits. 9a: it also runs, inserting nothing, at random one append in 50 while
    -- no version is rebuilding (its join keeps only `rebuilding` states).
    if not p_try_lock_no_skip and (v_states @> '[{"state": "rebuilding"}]' or random() < 0.02) then
      insert into projection_skips (projection, version, global_position)
      select st->>'name', (st->>'version')::int, r.global_position
        from unnest(v_rows) as r
        join jsonb_array_elements(v_states) as st on st->>'state' = 'rebuilding'
        join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
       where p->'types' ? r.type;
    end if;

    -- 9b. While a version of a projection applied in SQL is `rebuilding`, one append in 50 (at
    --     random) calls its function with one null event, which applies nothing (the contract of
    --     `sqlApply`, projections/definition.ts): see the header. Never fails the append: in a block
    --     of its own (a subtransaction, so whatever it did is undone if it throws).
    if v_states @> '[{"state": "rebuilding"}]' and random() < 0.02 then
      for v_apply in
        select format('%I', (st->>'name') || '_v' || (st->>'version') || '_apply') as fn
          from jsonb_array_elements(v_states) as st
          join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
         where st->>'state' = 'rebuilding' and coalesce((p->>'sql')::boolean, false)
      loop
        begin
          execute format('select %s(array[null::events])', v_apply.fn);
        exception when others then
          null;
        end;
      end loop;
    end if;

    -- 7. Each `live` version of a projection that applies in SQL (`sql`: its table T has a function
    --    T_apply(events[]), created with the table) applies the rows the insert returned, those of
    --    the types it handles, in this transaction: the same function its replay, drain and flip call
    --    with rows read from the log (projections/definition.ts, `sqlApply`), so no path computes a
    --    document differently. The client applies the others (JS `apply`) after this call, in its
    --    transaction.
    for v_apply in
      select format('%I', (st->>'name') || '_v' || (st->>'version') || '_apply') as fn,
             array(select r from unnest(v_rows) as r where p->'types' ? r.type order by r.stream_position) as events
        from jsonb_array_elements(v_states) as st
        join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
       where st->>'state' = 'live' and coalesce((p->>'sql')::boolean, false)
    loop
      if cardinality(v_apply.events) > 0 then
        execute format('select %s($1)', v_apply.fn) using v_apply.events;
      end if;
    end loop;
  elsif v_current = 0 then
    -- 8. Nothing inserted (a conflict the caller reports) on a stream without events: the row this
    --    call created at version 0 is deleted (still locked by this transaction, so no one else has
    --    seen it). Bad input writes nothing even when the call is its own transaction, where no
    --    client-side rollback follows the refusal.
    delete from streams as s where s.stream_id = p_stream_id and s.version = 0;
  end if;

  perform set_config('lock_timeout', v_lock_timeout, true);
  return jsonb_build_object('current', v_current, 'stored', v_stored, 'inserted', v_inserted, 'states', v_states);
end
$$;
