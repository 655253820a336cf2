import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
  // Records, at BEFORE INSERT time (defaults evaluated, heap not yet written), whether the inserting
  // transaction already owns an xid. Without an xid-first default, a transaction's first write gets
  // its xid only when the row reaches the heap, i.e. after the position was drawn.
  await t.db.query(`
    create table xid_probe (table_name text, global_position bigint, had_xid boolean)`);
  await t.db.query(`
    create function probe_xid() returns trigger language plpgsql as $$
    begin
      insert into xid_probe values (tg_table_name, new.global_position, pg_current_xact_id_if_assigned() is not null);
      return new;
    end $$`);
  await t.db.query('create trigger probe before insert on events for each row execute function probe_xid()');
  // The control: the same table shape with a plain identity column, as the design warns against.
  await t.db.query(`
    create table events_plain (global_position bigint generated always as identity primary key, stream_id text)`);
  await t.db.query('create trigger probe before insert on events_plain for each row execute function probe_xid()');
});
afterAll(async () => t?.drop());

describe('the events schema', () => {
  // nextval() itself assigns an xid only when it writes a WAL record (about one call in 32), so
  // each check runs many one-statement transactions.
  it('gives a raw INSERT INTO events its xid before it draws its position', async () => {
    for (let i = 1; i <= 64; i++) {
      await t.db.transaction((tx) =>
        tx.query(
          `insert into events (stream_id, stream_position, event_id, type, data)
           values ('raw', $1, gen_random_uuid(), 'Raw', '{}')`,
          [i],
        ),
      );
    }
    const probes = await t.db.query<{ had_xid: boolean }>("select had_xid from xid_probe where table_name = 'events'");
    expect(probes).toHaveLength(64);
    expect(probes.every((p) => p.had_xid)).toBe(true);
  });

  it('shows, on a control table, that a plain identity default draws positions before the xid', async () => {
    for (let i = 0; i < 64; i++) {
      await t.db.transaction((tx) => tx.query("insert into events_plain (stream_id) values ('raw')"));
    }
    const probes = await t.db.query<{ had_xid: boolean }>("select had_xid from xid_probe where table_name = 'events_plain'");
    expect(probes.filter((p) => !p.had_xid).length).toBeGreaterThan(32);
  });

  it('keeps the position sequence uncached', async () => {
    const [row] = await t.db.query<{ cache_size: number }>(
      "select cache_size from pg_sequences where sequencename = 'events_global_position_seq'",
    );
    expect(row?.cache_size).toBe(1);
  });

  it('refuses data that is not a JSON object even from a raw insert', async () => {
    await expect(
      t.db.query(
        `insert into events (stream_id, stream_position, event_id, type, data)
         values ('raw2', 1, gen_random_uuid(), 'Raw', '[1]')`,
      ),
    ).rejects.toMatchObject({ sqlState: '23514' });
  });

  // Since migration 011 these rules are the columns' domains: each must hold for every writer, by
  // insert or update, as the table checks did. The one raw insert above and these fail when a
  // domain loses its constraint.
  it.each([
    ['metadata that is not an object', `insert into events (stream_id, stream_position, event_id, type, data, metadata) values ('raw3', 1, gen_random_uuid(), 'Raw', '{}', '"x"')`, 'event_json_object_is_object'],
    ['a stream position of 0', `insert into events (stream_id, stream_position, event_id, type, data) values ('raw4', 0, gen_random_uuid(), 'Raw', '{}')`, 'event_stream_position_positive'],
    ['data made an array by an update', `update events set data = '[]' where stream_id = 'schema-u1'`, 'event_json_object_is_object'],
    ['a negative stream version', `insert into streams (stream_id, version) values ('raw5', -1)`, 'stream_version_not_negative'],
    ['a stream version made negative by an update', `update streams set version = version - 100 where stream_id = 'schema-s1'`, 'stream_version_not_negative'],
  ])('refuses %s, from any writer', async (_what, statement, constraint) => {
    await t.db.query(`insert into streams (stream_id, version) values ('schema-s1', 1) on conflict do nothing`);
    await t.db.query(
      `insert into events (stream_id, stream_position, event_id, type, data) values ('schema-u1', 1, gen_random_uuid(), 'Raw', '{}')
       on conflict do nothing`,
    );
    await expect(t.db.query(statement)).rejects.toMatchObject({ sqlState: '23514', constraint });
  });

  it('refuses through ledgerline_append itself what the JS validation would have stopped, writing nothing', async () => {
    // No inline projection: the general body; one: the one-event body (migration 012). Both insert
    // through the columns' domains.
    const call = (events: string, feeds = '[]') =>
      t.db.query(
        `select ledgerline_append('schema-a1', $1::jsonb, null, $2::jsonb, false, '5000', '10000', false, false)`,
        [events, feeds],
      );
    const oneFeed = JSON.stringify([{ name: 'schema_projection', types: ['T'], sql: true }]);
    await expect(call(JSON.stringify([{ id: randomUUID(), type: 'T', data: [1], metadata: {} }]), oneFeed)).rejects.toMatchObject({
      sqlState: '23514',
      constraint: 'event_json_object_is_object',
    });
    await expect(call(JSON.stringify([{ id: randomUUID(), type: 'T', data: [1], metadata: {} }]))).rejects.toMatchObject({
      sqlState: '23514',
      constraint: 'event_json_object_is_object',
    });
    await expect(call(JSON.stringify([{ id: randomUUID(), type: 'T', data: {}, metadata: 'x' }]))).rejects.toMatchObject({
      sqlState: '23514',
      constraint: 'event_json_object_is_object',
    });
    expect(await t.db.query("select 1 from streams where stream_id = 'schema-a1'")).toEqual([]);
    expect(await t.db.query("select 1 from events where stream_id = 'schema-a1'")).toEqual([]);
    await call(JSON.stringify([{ id: randomUUID(), type: 'T', data: {}, metadata: {} }]));
    expect(await t.db.query("select version from streams where stream_id = 'schema-a1'")).toEqual([{ version: 1 }]);
  });
});

describe('the inline projection state row (migration 017)', () => {
  // What the one-event append read before migration 017, and what the row must always hold.
  const aggregate = (name: string) =>
    t.db.query<{ live: number | null; rebuilding: number[] | null }>(
      `select max(version) filter (where state = 'live') as live,
              array_agg(version order by version) filter (where state = 'rebuilding') as rebuilding
         from projections where name = $1 and kind = 'inline' and state in ('live', 'rebuilding')`,
      [name],
    );
  const row = (name: string) =>
    t.db.query<{ live: number | null; rebuilding: number[] | null }>('select live, rebuilding from inline_projection_states where name = $1', [name]);

  it('holds what the aggregate over projections gives, through inserts, state changes and deletes', async () => {
    const steps = [
      `insert into projections (name, version, kind, state) values ('states_a', 1, 'inline', 'live')`,
      `insert into projections (name, version, kind, state) values ('states_a', 2, 'inline', 'rebuilding')`,
      `insert into projections (name, version, kind, state) values ('states_a', 3, 'inline', 'rebuilding')`,
      `update projections set state = 'failed' where name = 'states_a' and version = 3`,
      `update projections set state = case version when 1 then 'retired' else 'live' end where name = 'states_a' and version in (1, 2)`,
      `update projections set checkpoint = 7 where name = 'states_a'`,
      `insert into projections (name, version, kind, state) values ('states_a', 4, 'async', 'rebuilding')`,
      `delete from projections where name = 'states_a' and version = 2`,
    ];
    for (const step of steps) {
      await t.db.query(step);
      expect(await row('states_a'), step).toEqual(await aggregate('states_a'));
    }
    expect(await row('states_a')).toEqual([{ live: null, rebuilding: null }]);
    await t.db.query(`update projections set state = 'rebuilding', kind = 'inline' where name = 'states_a' and version = 4`);
    expect(await row('states_a')).toEqual([{ live: null, rebuilding: [4] }]);
    // A rename changes both names' rows.
    await t.db.query(`update projections set name = 'states_c' where name = 'states_a' and version = 4`);
    expect(await row('states_a')).toEqual([{ live: null, rebuilding: null }]);
    expect(await row('states_c')).toEqual([{ live: null, rebuilding: [4] }]);
  });

  it("keeps the row right when two transactions change a projection's rows at once", async () => {
    // T1 adds the live version and holds its transaction open; T2 adds a rebuilding one and waits
    // for T1's row of the same name. T2 must count T1's version once T1 has committed: computed
    // before its wait (an upsert of values from its first snapshot), it would write live = null.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let inserted!: () => void;
    const first = new Promise<void>((r) => (inserted = r));
    const t1 = t.db.transaction(async (tx) => {
      await tx.query(`insert into projections (name, version, kind, state) values ('states_b', 1, 'inline', 'live')`);
      inserted();
      await held;
    });
    await first;
    const t2 = t.db.transaction((tx) =>
      tx.query(`insert into projections (name, version, kind, state) values ('states_b', 2, 'inline', 'rebuilding')`),
    );
    const other = t.connect(1);
    for (let i = 0; ; i++) {
      const [waiting] = await other.query<{ n: number }>(
        `select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`,
      );
      if (waiting!.n > 0) break;
      if (i > 500) throw new Error('T2 never waited for T1');
      await new Promise((r) => setTimeout(r, 10));
    }
    release();
    await Promise.all([t1, t2]);
    expect(await row('states_b')).toEqual([{ live: 1, rebuilding: [2] }]);
    expect(await row('states_b')).toEqual(await aggregate('states_b'));
  });
});

