-- The event log, stream versions, projection bookkeeping and skip rows (DESIGN.md section 2).

-- CACHE 1: with a per-session cache, a session could draw a lower position after another session's
-- higher one is already visible, which breaks the async projectors' gap reasoning (DESIGN.md 3.3).
create sequence events_global_position_seq as bigint cache 1;

-- The position default. pg_current_xact_id() assigns the transaction its xid *before* nextval draws
-- the position, so every transaction that holds a position already holds an xid, and an xid taken
-- later by anyone is larger. A column default of pg_current_xact_id() for transaction_id alone is not
-- enough: it may be evaluated after the position is drawn. Any INSERT that relies on the default,
-- including a raw one that bypasses appendToStream, gets this order.
create function next_global_position() returns bigint
language plpgsql volatile parallel unsafe as $$
begin
  perform pg_current_xact_id();
  return nextval('events_global_position_seq');
end
$$;

create table events (
  global_position bigint primary key default next_global_position(),
  stream_id       text        not null,
  stream_position bigint      not null,
  event_id        uuid        not null,
  type            text        not null,
  data            jsonb       not null,
  metadata        jsonb       not null default '{}'::jsonb,
  recorded_at     timestamptz not null default now(),
  transaction_id  xid8        not null default pg_current_xact_id(),
  constraint events_stream_position_key unique (stream_id, stream_position),
  constraint events_event_id_key unique (event_id),
  constraint events_stream_position_positive check (stream_position > 0),
  constraint events_data_is_object check (jsonb_typeof(data) = 'object'),
  constraint events_metadata_is_object check (jsonb_typeof(metadata) = 'object')
);

alter sequence events_global_position_seq owned by events.global_position;

-- One row per stream: its version is its last stream position. The append locks this row, which
-- serialises appends to one stream and makes the expected-version check a compare-and-set.
create table streams (
  stream_id  text primary key,
  version    bigint      not null check (version >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- One row per projection version (DESIGN.md 2). Lease and fencing columns belong to the rebuild and
-- async protocols; an inline projection's live row is what appends read to decide apply or skip.
create table projections (
  name             text        not null,
  version          integer     not null check (version > 0),
  kind             text        not null check (kind in ('inline', 'async')),
  state            text        not null check (state in ('live', 'rebuilding', 'retired', 'failed')),
  checkpoint       bigint      not null default 0,
  gaps             jsonb       not null default '[]'::jsonb,
  rebuild_id       uuid,
  lease_owner      text,
  lease_expires_at timestamptz,
  fencing_token    bigint      not null default 0,
  events_applied   bigint      not null default 0,
  last_error       text,
  created_at       timestamptz not null default now(),
  updated_at       timestamptz not null default now(),
  primary key (name, version)
);

-- At most one live version per projection.
create unique index projections_one_live on projections (name) where state = 'live';

-- Written in the append transaction, instead of applying the event, while a projection version is
-- rebuilding; deleted by the rebuild in the transaction that applies the event. A row exists iff its
-- event is committed and not yet applied to that version. No foreign key to projections: the check
-- would run on the append hot path, and the rebuild removes a version's rows itself.
create table projection_skips (
  projection      text        not null,
  version         integer     not null,
  global_position bigint      not null,
  recorded_at     timestamptz not null default now(),
  primary key (projection, version, global_position)
);
