import { afterEach, describe, expect, it } from 'vitest';
import { checksum, migrate, type Migration } from '../../functions/db/migrate.ts';
import { loadMigrations } from '../../functions/db/migrations-dir.ts';
import { createTestDatabase, type TestDatabase } from '../support/test-db.ts';
import { appendToStream } from '../../functions/core/event-store/index.ts';
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
