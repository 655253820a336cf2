-- The append's protocol steps 1 to 4 (functions/core/event-store/append.ts) as one server-side call.
--
-- Why a function: the steps are several statements because each needs a snapshot taken after the
-- previous one's lock. Sent one by one they cost the RDS Data API (the stack's default driver) an
-- HTTPS call each: an append took 6 calls, 7 with caller-chosen ids; it now takes 4
-- (test/int/drivers.int.test.ts). postgres.js already pipelined them in one round trip; there the
-- call saves the protocol exchanges of three statements, and lets the stream lock, the expected-
-- version check and the version move be one upsert. A VOLATILE plpgsql function gives each
-- statement it runs a fresh snapshot (READ COMMITTED), so the order of locks and snapshots that
-- made the separate statements safe holds inside one call.
--
-- Statement by statement (each with its own snapshot, in this order):
-- 1. The shared advisory locks of the inline projections the events feed, in name order (the same
--    keys Start, Flip and Cancel take exclusively: projection_lock_key below). The wait
--    holds nothing yet.
-- 2. Transaction-local timeouts for the rest of the caller's transaction. statement_timeout starts
--    only with the caller's next statement, so the waits left in this call (the stream row, a
--    concurrent insert of the same event id) are bounded by lock_timeout, set to the same bound here
--    and restored before returning: everything done while holding the shared locks is bounded.
-- 3. Lock the stream row (serialises appends to one stream), check the expected version against
--    the newest committed version and move it past the new events, in one upsert: its conflict path
--    waits for the row's holder and then works on the row as that holder committed it.
--    With caller-chosen ids the check for those ids must come between the lock and the move (a
--    retry is answered with the original result, whatever the version now is), so that path takes
--    three statements: lock (an upsert whose update never applies), read the stored ids and the
--    version with a snapshot taken after the lock, then move the version.
-- 4. Expected version: on a mismatch return the version found and insert nothing.
-- 5. The projection versions' states, with a snapshot taken after the locks of 1: an append queued
--    behind a Start or Flip sees what that transaction committed.
-- 6. Insert the events and write a skip row per event for every `rebuilding` version, in one
--    statement, so a skip row exists iff its event commits.
--
-- p_state_in_lock and p_try_lock_no_skip are the deliberate breakages the fault-injection suite
-- switches on (functions/core/breakages.ts); in production both are false.
-- The advisory-lock key of a projection, defined once: the append below takes it shared; Start,
-- Flip, Cancel and ensureProjection take it exclusively through LOCK_KEY_SQL
-- (projections/definition.ts), which calls this. Inlined by the planner (a SQL, immutable function).
create function projection_lock_key(p_name text) returns bigint
language sql immutable parallel safe as $$
  select hashtextextended('projection:' || p_name, 0)
$$;

create function ledgerline_append(
  p_stream_id         text,
  p_events            jsonb,   -- [{id, type, data, metadata}]
  p_expected          bigint,  -- null: any version
  p_projections       jsonb,   -- [{name, types}] of the inline projections these events feed
  p_ids_from_caller   boolean,
  p_statement_timeout text,
  p_idle_timeout      text,
  p_state_in_lock     boolean,
  p_try_lock_no_skip  boolean
) returns jsonb
language plpgsql volatile parallel unsafe as $$
declare
  v_names        text[] := array(select p->>'name' from jsonb_array_elements(p_projections) as p order by 1);
  v_states       jsonb := '[]'::jsonb;
  v_current      bigint;
  v_lock_timeout text;
  v_stored       jsonb := '[]'::jsonb;
  v_inserted     jsonb := '[]'::jsonb;
  v_count        bigint := jsonb_array_length(p_events);
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
      returning global_position, stream_position, recorded_at, type
    ),
    skips as (
      insert into projection_skips (projection, version, global_position)
      select st->>'name', (st->>'version')::int, ins.global_position
        from ins
        join jsonb_array_elements(v_states) as st on st->>'state' = 'rebuilding' and not p_try_lock_no_skip
        join jsonb_array_elements(p_projections) as p on p->>'name' = st->>'name'
       where ins.type in (select jsonb_array_elements_text(p->'types'))
    )
    select coalesce(jsonb_agg(jsonb_build_object(
             'global_position', ins.global_position, 'stream_position', ins.stream_position,
             'recorded_at', to_char(ins.recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
             order by ins.stream_position), '[]'::jsonb)
      into v_inserted
      from ins;
  end if;

  perform set_config('lock_timeout', v_lock_timeout, true);
  return jsonb_build_object('current', v_current, 'stored', v_stored, 'inserted', v_inserted, 'states', v_states);
end
$$;
