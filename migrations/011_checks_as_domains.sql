-- The checks on events and streams (migration 001) become constraints of domains, the columns'
-- types: the same rules, enforced on every insert and update by anyone, at less cost per append.
--
-- Why: PostgreSQL builds a table's CHECK constraints again for every statement that inserts or
-- updates it: it parses each stored expression from its text (stringToNode) and plans it. An
-- append runs two such statements (the stream row and the event), so it paid for four checks each
-- time. A domain's checks are parsed and planned once per connection (the type cache); a statement
-- only compiles them. Counted by callgrind, as `npm run bench` scenario 5 counts (one-event appends
-- with order_summary inline, 1,000 appends): 1,091,375 instructions per append with the table
-- checks, 1,028,567 with these domains (-5.8%), 1,012,195 with no checks at all.
--
-- How, without rewriting the log (at 100 million events a rewrite would hold an ACCESS EXCLUSIVE
-- lock on `events` for as long as it takes to copy it):
-- 1. The columns take domains that have no constraint yet. A domain without constraints is
--    binary-coercible from its base type, so ALTER COLUMN TYPE changes the catalog only: no
--    rewrite, no scan, and the indexes on stream_position are kept as they are (same operator
--    class). It still takes the ACCESS EXCLUSIVE lock, for the length of a catalog change.
-- 2. The domains get their checks NOT VALID: enforced on every value from then on, not checked
--    against the rows already stored. Those rows were held to the same rules by the table
--    constraints, which were validated and stay in force until step 3 of this same transaction, so
--    every stored row satisfies them. (VALIDATE CONSTRAINT would prove it again by reading the
--    whole log under a lock that blocks appends.)
-- 3. The table constraints go.
-- A violation is still SQLSTATE 23514 (check_violation), now naming the domain's constraint.
-- test/int/migrations.int.test.ts checks that neither table nor any index is rewritten, and
-- test/int/schema.int.test.ts that each rule is still enforced, for raw inserts and updates too.

create domain event_stream_position as bigint;
create domain event_json_object as jsonb;
create domain stream_version as bigint;

alter table events
  alter column stream_position type event_stream_position,
  alter column data type event_json_object,
  alter column metadata type event_json_object;
alter table streams
  alter column version type stream_version;

alter domain event_stream_position
  add constraint event_stream_position_positive check (value > 0) not valid;
alter domain event_json_object
  add constraint event_json_object_is_object check (jsonb_typeof(value) = 'object') not valid;
alter domain stream_version
  add constraint stream_version_not_negative check (value >= 0) not valid;

alter table events
  drop constraint events_stream_position_positive,
  drop constraint events_data_is_object,
  drop constraint events_metadata_is_object;
alter table streams
  drop constraint streams_version_check;
