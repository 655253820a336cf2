import { describe, expect, it } from 'vitest';
import { splitSqlStatements } from '../../functions/db/split-sql.ts';

describe('splitting a migration into statements', () => {
  it('splits at top-level semicolons only', () => {
    const script = `
      create table a (x text default 'a;b');  -- trailing; comment
      /* block; comment /* nested; */ */
      create function f() returns int language plpgsql as $$ begin return 1; end; $$;
      create function g() returns text language sql as $body$ select 'x;y' $body$;
      select "odd;name" from a;
      select 'it''s; fine'
    `;
    expect(splitSqlStatements(script)).toEqual([
      "create table a (x text default 'a;b')",
      expect.stringMatching(/^-- trailing; comment[\s\S]*create function f\(\)[\s\S]*end; \$\$$/),
      "create function g() returns text language sql as $body$ select 'x;y' $body$",
      'select "odd;name" from a',
      "select 'it''s; fine'",
    ]);
  });

  it('drops empty and comment-only statements', () => {
    expect(splitSqlStatements(';;\n-- only a comment\n;')).toEqual([]);
  });

  it('keeps positional parameters that look like dollar quotes', () => {
    expect(splitSqlStatements('select $1, $2; select 2')).toEqual(['select $1, $2', 'select 2']);
  });

  it('refuses an unterminated dollar quote', () => {
    expect(() => splitSqlStatements('select $$ never closed')).toThrow(/unterminated/);
  });
});
