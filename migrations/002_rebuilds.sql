-- One row per rebuild of a projection (DESIGN.md 3.2). The row is also the rebuild's lease: every
-- step checks (owner, fencing_token) with a row lock in the transaction that writes.

create table rebuilds (
  rebuild_id       uuid primary key,
  projection       text        not null,
  -- The version being built: a new one for blue-green, the live one for in-place.
  version          integer     not null,
  -- Blue-green: the version that stays live until the flip.
  previous_version integer,
  mode             text        not null check (mode in ('blue-green', 'in-place')),
  phase            text        not null check (phase in ('starting', 'replaying', 'draining', 'done', 'failed', 'cancelled')),
  -- max(global_position) when Start committed; replay stops here, later events have skip rows.
  target_position  bigint,
  checkpoint       bigint      not null default 0,
  events_replayed  bigint      not null default 0,
  skips_drained    bigint      not null default 0,
  lease_owner      text,
  lease_expires_at timestamptz,
  fencing_token    bigint      not null default 1,
  attempts         integer     not null default 1,
  error            text,
  started_at       timestamptz not null default now(),
  updated_at       timestamptz not null default now(),
  finished_at      timestamptz
);

-- A second rebuild of the same projection is refused while one is unfinished.
create unique index rebuilds_one_active on rebuilds (projection)
  where phase in ('starting', 'replaying', 'draining');

create index rebuilds_by_projection on rebuilds (projection, started_at desc);
