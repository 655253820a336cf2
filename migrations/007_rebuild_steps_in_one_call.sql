-- Start and Flip each in one server-side call, so that, called without an explicit transaction, the
-- exclusive projection lock is held for the server's work alone.
--
-- Why: every writer of the projection queues behind the exclusive lock from the moment it is
-- requested until the transaction commits. Sent from the client, that was the lock and its
-- statements in one round trip, then COMMIT in another (Flip: the lock with the first drain batch,
-- the closing updates, then COMMIT); on a busy machine each round trip waits for the worker's own
-- turn on a core. As one call in its own implicit transaction, the commit follows the last
-- statement on the server (`npm run bench`, scenario 3, measures the stall). The protocol is the
-- one functions/core/rebuild/start.ts and flip.ts describe; each step below says what it keeps.
-- The breakages of the fault-injection tests are parameters, as ledgerline_append's are, so that
-- the tests run this code with one protection switched off.
--
-- The one definition of what every rebuild step runs first (lease.ts: beginStep sends the two as
-- statements of its own; a step made as one call begins with ledgerline_rebuild_begin, both).
--
-- ledgerline_rebuild_limits: the step's transaction-local limits and planner settings (lease.ts,
-- setRebuildTimeouts, says why each). A setting made here holds for the caller's later statements
-- too, but statement_timeout bounds only statements that start after it.
create function ledgerline_rebuild_limits(p_lock_timeout text) returns void
language plpgsql volatile as $$
begin
  perform set_config('idle_in_transaction_session_timeout', '10000', true),
          set_config('statement_timeout', '120000', true),
          set_config('lock_timeout', p_lock_timeout, true),
          set_config('plan_cache_mode', 'force_custom_plan', true),
          set_config('work_mem', '64MB', true);
end
$$;

-- ledgerline_rebuild_fence: the fencing check (lease.ts, fence, says why it is safe), given the
-- lease as {rebuildId, owner, token, leaseMs, lockTimeout, plainSelect} (lease.ts, leaseParam): a
-- conditional UPDATE of the rebuild row on (owner, token) that extends the lease and holds the row
-- lock to commit. A lost lease raises SQLSTATE LLF01 (the client reports FencingTokenLostError).
-- plainSelect: the breakage, a plain SELECT that holds nothing.
create function ledgerline_rebuild_fence(p_lease jsonb) returns rebuilds
language plpgsql volatile as $$
declare
  v rebuilds;
begin
  if (p_lease->>'plainSelect')::boolean then
    select * into v from rebuilds
     where rebuild_id = (p_lease->>'rebuildId')::uuid and lease_owner = p_lease->>'owner'
       and fencing_token = (p_lease->>'token')::bigint;
  else
    update rebuilds
       set lease_expires_at = now() + make_interval(secs => (p_lease->>'leaseMs')::double precision / 1000), updated_at = now()
     where rebuild_id = (p_lease->>'rebuildId')::uuid and lease_owner = p_lease->>'owner'
       and fencing_token = (p_lease->>'token')::bigint
    returning * into v;
  end if;
  if v.rebuild_id is null then
    raise exception 'rebuild % is no longer held by this worker', p_lease->>'rebuildId' using errcode = 'LLF01';
  end if;
  return v;
end
$$;

-- ledgerline_rebuild_begin: both, for a step made as one call (a call made alone is bounded by
-- lock_timeout while it waits and by the session's statement_timeout).
create function ledgerline_rebuild_begin(p_lease jsonb) returns rebuilds
language plpgsql volatile as $$
begin
  perform ledgerline_rebuild_limits(p_lease->>'lockTimeout');
  return ledgerline_rebuild_fence(p_lease);
end
$$;

-- ledgerline_drain_batch: one drain batch of a projection applied in SQL, in one statement (drain.ts
-- calls it in a drain step's transaction; ledgerline_rebuild_flip under its lock). The oldest
-- p_batch skip rows' events, read into one array, go to the version's function, and the skip rows of
-- exactly those positions are deleted; returns how many. Both the apply and the deletion take the
-- one array, so a skip row that commits while the statement runs is neither applied nor deleted (it
-- is not in the statement's snapshot) and the next batch takes it. Never a range delete: drain.ts.
create function ledgerline_drain_batch(p_projection text, p_version integer, p_batch integer) returns integer
language plpgsql volatile as $$
declare
  v_size integer;
begin
  execute format($q$
    with b as materialized (
      select array(select e from projection_skips as s
                     join events as e on e.global_position = s.global_position
                    where s.projection = $1 and s.version = $2
                    order by s.global_position
                    limit $3) as events
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
         -- The batch's range is the index condition, and "= any" keeps exactly its positions.
         -- Without the range PostgreSQL scanned every skip row of the version and filtered by the
         -- array: the rows of earlier batches too, dead but not yet vacuumed (the bench's drains
         -- and flips slowed to about 0.2 ms per skip row, 60 ms for a flip of 250, in throwaway
         -- timings inside the flip-stall scenario).
         and s.global_position between (select lo from positions) and (select hi from positions)
         -- The cast makes the subquery a scalar array for "= any", not an ANY over rows of arrays.
         and s.global_position = any ((select list from positions)::bigint[])
    )
    -- applied's count is selected, or the CTE would not run.
    select cardinality(b.events), (select count(*) from applied) from b
  $q$, p_projection || '_v' || p_version || '_apply')
  into v_size using p_projection, p_version, p_batch;
  return coalesce(v_size, 0);
end
$$;

-- ledgerline_rebuild_drain_batch: a drain step's transaction of a projection applied in SQL (drain.ts
-- says why it is safe): the fencing check, then in phase `draining` one batch (ledgerline_drain_batch)
-- and the rebuild's count of skip rows drained. One call instead of four round trips (BEGIN with the
-- check, the batch, the count, COMMIT): drain stops once the backlog is about what arrives while a
-- batch runs, so the shorter a batch, the less it leaves for Flip to apply under its lock. Returns
-- {phase, drained, skipsDrained, version}.
create function ledgerline_rebuild_drain_batch(
  p_lease        jsonb,
  p_batch        integer
) returns jsonb
language plpgsql volatile as $$
declare
  v   rebuilds := ledgerline_rebuild_begin(p_lease);
  v_n integer := 0;
begin
  if v.phase = 'draining' then
    v_n := ledgerline_drain_batch(v.projection, v.version, p_batch);
    update rebuilds set skips_drained = skips_drained + v_n, updated_at = now() where rebuild_id = v.rebuild_id;
  end if;
  return jsonb_build_object('phase', v.phase, 'drained', v_n, 'skipsDrained', v.skips_drained + v_n, 'version', v.version);
end
$$;

-- ledgerline_rebuild_start: Start's locked part (start.ts says why it is safe). After the fencing
-- check, and only in phase `starting`: the exclusive lock (under the lease's lockTimeout: a timeout raises
-- 55P03 and the caller retries with a longer one), then, each statement with a snapshot taken after
-- the lock was granted (a VOLATILE function takes one per statement): the version marked
-- `rebuilding`, its tables (p_tables, the definition's; names checked by the caller) truncated, its
-- skip rows deleted, the replay target recorded. Returns the phase: `replaying` when it started the
-- rebuild now, else the phase it found (nothing done).
create function ledgerline_rebuild_start(
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
  execute 'truncate ' || (select string_agg(format('%I', t), ', ') from unnest(p_tables) as t);
  delete from projection_skips where projection = v.projection and version = v.version;
  update rebuilds
     set phase = 'replaying', checkpoint = 0, events_replayed = 0, skips_drained = 0, updated_at = now(),
         target_position = (select coalesce(max(global_position), 0) from events)
   where rebuild_id = v.rebuild_id;
  return 'replaying';
end
$$;

-- ledgerline_rebuild_close_flip: Flip's closing updates, once the last skip rows are applied under
-- the lock (ledgerline_rebuild_flip below; flip.ts calls it too, for a projection applied in JS):
-- the previous version `retired` (blue-green), the version `live` (an inline one's checkpoint
-- records the replay target; an async one keeps its own checkpoint and gaps, and its projector
-- lease is released for the scheduled projector), the rebuild `done` with its lease ended.
create function ledgerline_rebuild_close_flip(v rebuilds, p_drained integer) returns void
language plpgsql volatile as $$
begin
  if v.mode = 'blue-green' and v.previous_version is not null then
    update projections set state = 'retired', updated_at = now()
     where name = v.projection and version = v.previous_version and state = 'live';
  end if;
  update projections
     set state = 'live', updated_at = now(), lease_owner = null, lease_expires_at = null,
         checkpoint = case when kind = 'inline' then coalesce(v.target_position, 0) else checkpoint end
   where name = v.projection and version = v.version;
  update rebuilds
     set phase = 'done', skips_drained = skips_drained + p_drained, finished_at = now(), updated_at = now(),
         lease_owner = null, lease_expires_at = null
   where rebuild_id = v.rebuild_id;
end
$$;

-- ledgerline_rebuild_flip: Flip of a projection applied in SQL (flip.ts says why it is safe). After
-- the fencing check, and only in phase `draining`: the exclusive lock (p_without_lock: the breakage,
-- none), then the last skip rows in batches of p_batch until one comes back short (each batch's
-- snapshot is taken after the lock was granted, so it sees every skip row of an append that held the
-- shared lock), the version `live` (an inline one's checkpoint = the replay target), the previous
-- one `retired` (blue-green), the rebuild `done` and its lease ended. Returns {phase, drained}.
create function ledgerline_rebuild_flip(
  p_lease        jsonb,
  p_without_lock boolean,
  p_batch        integer
) returns jsonb
language plpgsql volatile as $$
declare
  v       rebuilds := ledgerline_rebuild_begin(p_lease);
  v_n     integer;
  v_total integer := 0;
begin
  if v.phase <> 'draining' then
    return jsonb_build_object('phase', v.phase, 'drained', 0);
  end if;
  if not p_without_lock then
    perform pg_advisory_xact_lock(projection_lock_key(v.projection));
  end if;
  loop
    v_n := ledgerline_drain_batch(v.projection, v.version, p_batch);
    v_total := v_total + v_n;
    exit when v_n < p_batch;
  end loop;
  perform ledgerline_rebuild_close_flip(v, v_total);
  return jsonb_build_object('phase', 'done', 'drained', v_total);
end
$$;
