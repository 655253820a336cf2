import { afterEach, describe, expect, it } from 'vitest';
import { checksum, migrate, type Migration } from '../../functions/db/migrate.ts';
import { loadMigrations } from '../../functions/db/migrations-dir.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';
import { appendToStream } from '../../functions/core/event-store/index.ts';
import { ensureProjection } from '../../functions/core/projections/ensure.ts';
import { orderSummary, readOrderSummaryRows } from '../../functions/domain/order-summary.ts';

const created: TestDatabase[] = [];
afterEach(async () => {
  await Promise.all(created.splice(0).map((t) => t.drop()));
});

async function fresh(): Promise<TestDatabase> {
  const t = await createTestDatabase({ migrated: false });
  created.push(t);
  return t;
}

const sample: Migration[] = [
  { name: '001_a.sql', sql: 'create table a (id int primary key);\ninsert into a values (1);' },
  {
    name: '002_b.sql',
    sql: `create table b (id int);
          -- a body with semicolons inside dollar quotes
          create function b_count() returns bigint language plpgsql as $$ begin return (select count(*) from b); end; $$;
          insert into a values (2);`,
  },
];

describe('migrations', () => {
  it('applies the project migrations once and records their checksums', async () => {
    const t = await fresh();
    const files = loadMigrations();
    expect(await migrate(t.db, files)).toEqual(files.map((f) => f.name));
    expect(await migrate(t.db, files)).toEqual([]);
    const rows = await t.db.query<{ name: string; checksum: string }>('select name, checksum from schema_migrations order by name');
    expect(rows).toEqual(files.map((f) => ({ name: f.name, checksum: checksum(f.sql) })));
  });

  it('upgrades a database whose projection versions are in use: 008 names them in the append\'s dispatch', async () => {
    const t = await fresh();
    const files = loadMigrations();
    await migrate(t.db, files.filter((f) => f.name < '008'));
    // Version 1 live, as a deploy before 008 left it (its table and apply function).
    await t.db.transaction(async (tx) => {
      await tx.query(`insert into projections (name, version, kind, state) values ('order_summary', 1, 'inline', 'live')`);
      await orderSummary.createTable(tx, 'order_summary_v1');
    });
    await migrate(t.db, files);
    const [dispatch] = await t.db.query<{ src: string }>(`select prosrc as src from pg_proc where proname = 'ledgerline_apply_version'`);
    expect(dispatch!.src).toContain('order_summary_v1_apply(p_events)');
    await appendToStream(t.db, 'order-u1', [{ type: 'PaymentProcessed', data: { orderId: 'u1', amount: 1 } }], { projections: [orderSummary] });
    expect((await readOrderSummaryRows(t.db, 'order_summary_v1')).map((r) => [r.order_id, r.events_applied])).toEqual([['u1', 1]]);
  });

  // 011 changes the types of columns of the log. A rewrite would hold ACCESS EXCLUSIVE on `events`
  // for as long as copying it takes (and rebuild its indexes): a new relfilenode is that rewrite.
  it('upgrades a log in use to 011\'s domains without rewriting events, streams or an index of theirs', async () => {
    const t = await fresh();
    const files = loadMigrations();
    await migrate(t.db, files.filter((f) => f.name < '011'));
    await ensureProjection(t.db, orderSummary);
    const data = (amount: number) => ({ orderId: 'm1', occurredAt: '2026-01-01T00:00:00.000Z', amount });
    await appendToStream(t.db, 'order-m1', [{ type: 'PaymentProcessed', data: data(1) }, { type: 'PaymentProcessed', data: data(2) }], {
      projections: [orderSummary],
    });
    const storage = () =>
      t.db.query<{ relname: string; relfilenode: string }>(
        `select c.relname, c.relfilenode::text from pg_class as c
          where c.oid in ('events'::regclass, 'streams'::regclass)
             or c.oid in (select indexrelid from pg_index where indrelid in ('events'::regclass, 'streams'::regclass))
          order by c.relname`,
      );
    const before = await storage();
    expect(before.map((r) => r.relname)).toEqual(
      ['events', 'events_event_id_key', 'events_pkey', 'events_stream_position_key', 'streams', 'streams_pkey'],
    );
    expect(await migrate(t.db, files)).toEqual(files.filter((f) => f.name >= '011').map((f) => f.name));
    expect(await storage()).toEqual(before);

    const types = await t.db.query<{ col: string; type: string }>(
      `select table_name || '.' || column_name as col, domain_name as type from information_schema.columns
        where (table_name, column_name) in (('events', 'stream_position'), ('events', 'data'), ('events', 'metadata'), ('streams', 'version'))
        order by 1`,
    );
    expect(types).toEqual([
      { col: 'events.data', type: 'event_json_object' },
      { col: 'events.metadata', type: 'event_json_object' },
      { col: 'events.stream_position', type: 'event_stream_position' },
      { col: 'streams.version', type: 'stream_version' },
    ]);
    // The rows stored before read as before, and the stream goes on from its version.
    const result = await appendToStream(t.db, 'order-m1', [{ type: 'PaymentProcessed', data: data(3) }], {
      expectedVersion: 2,
      projections: [orderSummary],
    });
    expect(result.streamVersion).toBe(3);
    const rows = await t.db.query<{ stream_position: number; amount: number }>(
      "select stream_position, (data->>'amount')::int as amount from events where stream_id = 'order-m1' order by 1",
    );
    expect(rows).toEqual([
      { stream_position: 1, amount: 1 },
      { stream_position: 2, amount: 2 },
      { stream_position: 3, amount: 3 },
    ]);
    expect((await readOrderSummaryRows(t.db, 'order_summary_v1')).map((r) => [r.order_id, r.events_applied])).toEqual([['m1', 3]]);
  });

  it('applies each file exactly once when two processes migrate at the same time', async () => {
    const t = await fresh();
    const other = t.connect(2);
    const [one, two] = await Promise.all([migrate(t.db, sample), migrate(other, sample)]);
    expect([...one, ...two].sort()).toEqual(['001_a.sql', '002_b.sql']);
    const rows = await t.db.query<{ id: number }>('select id from a order by id');
    expect(rows.map((r) => r.id)).toEqual([1, 2]);
    expect(await t.db.query('select name from schema_migrations')).toHaveLength(2);
  });

  it('refuses to run when an applied file was edited, and applies nothing', async () => {
    const t = await fresh();
    await migrate(t.db, sample.slice(0, 1));
    const edited = [{ ...sample[0]!, sql: sample[0]!.sql + '\n-- tweak' }, sample[1]!];
    await expect(migrate(t.db, edited)).rejects.toMatchObject({ code: 'MIGRATION_CHECKSUM_MISMATCH' });
    expect(await t.db.query("select 1 from pg_tables where tablename = 'b'")).toEqual([]);
  });

  it('refuses to run when an applied file is missing', async () => {
    const t = await fresh();
    await migrate(t.db, sample);
    await expect(migrate(t.db, sample.slice(1))).rejects.toMatchObject({ code: 'MIGRATION_MISSING' });
  });

  it('rolls back a failing file completely and keeps the ones before it', async () => {
    const t = await fresh();
    const broken = [sample[0]!, { name: '002_bad.sql', sql: 'create table c (id int);\nselect * from no_such_table;' }];
    await expect(migrate(t.db, broken)).rejects.toThrow(/no_such_table/);
    expect((await t.db.query<{ name: string }>('select name from schema_migrations')).map((r) => r.name)).toEqual(['001_a.sql']);
    expect(await t.db.query("select 1 from pg_tables where tablename = 'c'")).toEqual([]);
  });

  it('refuses badly named or duplicate-numbered files', async () => {
    const t = await fresh();
    await expect(migrate(t.db, [{ name: 'a.sql', sql: 'select 1' }])).rejects.toMatchObject({ code: 'MIGRATION_NAME_INVALID' });
    await expect(
      migrate(t.db, [
        { name: '001_a.sql', sql: 'select 1' },
        { name: '001_b.sql', sql: 'select 1' },
      ]),
    ).rejects.toMatchObject({ code: 'MIGRATION_NUMBER_REUSED' });
  });
});
