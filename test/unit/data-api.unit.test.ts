import { describe, expect, it } from 'vitest';
import { fromField, toDataApiError, toNamedParameters, toParameter, toRows } from '../../functions/db/data-api.ts';

// Shapes from the RDS Data API reference (ExecuteStatement: records, columnMetadata, Field).
describe('the Data API driver mapping', () => {
  it('rewrites positional parameters to named ones, leaving casts, quotes, dollar quotes and comments alone', () => {
    expect(toNamedParameters('select $1::jsonb, $2 from t where a = $10')).toBe('select :p1::jsonb, :p2 from t where a = :p10');
    expect(toNamedParameters("select '$1', \"$2\", $3 -- $4\n/* $5 */")).toBe("select '$1', \"$2\", :p3 -- $4\n/* $5 */");
    expect(toNamedParameters('create function f() returns int as $$ select $1 $$ language sql; select $1')).toBe(
      'create function f() returns int as $$ select $1 $$ language sql; select :p1',
    );
  });

  it('maps values faithfully, with what the Data API cannot hold exactly as text', () => {
    expect(toParameter('p1', null)).toEqual({ name: 'p1', value: { isNull: true } });
    expect(toParameter('p1', true)).toEqual({ name: 'p1', value: { booleanValue: true } });
    expect(toParameter('p1', 42)).toEqual({ name: 'p1', value: { longValue: 42 } });
    expect(toParameter('p1', 2 ** 40)).toEqual({ name: 'p1', value: { stringValue: '1099511627776' } });
    expect(toParameter('p1', 1.5)).toEqual({ name: 'p1', value: { doubleValue: 1.5 } });
    expect(toParameter('p1', 12345678901234567890n)).toEqual({ name: 'p1', value: { stringValue: '12345678901234567890' } });
    expect(toParameter('p1', new Date('2026-11-29T10:00:00.123Z'))).toEqual({ name: 'p1', value: { stringValue: '2026-11-29T10:00:00.123Z' } });
    expect(toParameter('p1', [1, 2])).toEqual({ name: 'p1', value: { stringValue: '[1,2]' } });
  });

  it('maps results by column metadata as the postgres.js driver types them', () => {
    const rows = toRows<Record<string, unknown>>(
      [
        [{ longValue: 7 }, { stringValue: '9007199254740991' }, { stringValue: '{"a":[1]}' }, { isNull: true }, { stringValue: '2026-11-29 10:00:00.123' }, { booleanValue: true }, { stringValue: '12.50' }],
      ],
      [
        { label: 'global_position', typeName: 'int8' },
        { label: 'big', typeName: 'int8' },
        { label: 'data', typeName: 'jsonb' },
        { label: 'nothing', typeName: 'text' },
        { label: 'recorded_at', typeName: 'timestamptz' },
        { label: 'ok', typeName: 'bool' },
        { label: 'amount', typeName: 'numeric' },
      ],
    );
    expect(rows).toEqual([
      { global_position: 7, big: 9007199254740991, data: { a: [1] }, nothing: null, recorded_at: new Date('2026-11-29T10:00:00.123Z'), ok: true, amount: '12.50' },
    ]);
    expect(() => fromField({ stringValue: '9007199254740993' }, 'int8')).toThrow(/2\^53/);
  });

  it('reads timestamps as the Data API sends them (UTC text, 0 to 6 fractional digits) and as ISO text', () => {
    expect(fromField({ stringValue: '2026-11-29 10:00:00' }, 'timestamptz')).toEqual(new Date('2026-11-29T10:00:00.000Z'));
    expect(fromField({ stringValue: '2026-11-29 10:00:00.5' }, 'timestamptz')).toEqual(new Date('2026-11-29T10:00:00.500Z'));
    expect(fromField({ stringValue: '2026-11-29 10:00:00.123456' }, 'timestamp')).toEqual(new Date('2026-11-29T10:00:00.123Z'));
    expect(fromField({ stringValue: '2026-11-29T10:00:00.123Z' }, 'timestamptz')).toEqual(new Date('2026-11-29T10:00:00.123Z'));
    expect(fromField({ stringValue: '2026-11-29 12:00:00+02' }, 'timestamptz')).toEqual(new Date('2026-11-29T10:00:00.000Z'));
    expect(() => fromField({ stringValue: 'yesterday' }, 'timestamptz')).toThrow(/timestamp/);
  });

  it('reads a bigint the Data API sends as longValue, and an xid8 cast to text as text', () => {
    const rows = toRows<Record<string, unknown>>([[{ longValue: 4_000_000_000 }, { stringValue: '18446744073709551615' }]], [
      { name: 'checkpoint', typeName: 'int8' },
      { name: 'xid', typeName: 'text' },
    ]);
    expect(rows).toEqual([{ checkpoint: 4_000_000_000, xid: '18446744073709551615' }]);
  });

  it('finds the SQLSTATE in Data API errors, and treats throttling as retryable', () => {
    const conflict = toDataApiError(
      Object.assign(new Error('ERROR: duplicate key value violates unique constraint "events_event_id_key"; SQLState: 23505'), { name: 'BadRequestException' }),
    );
    expect(conflict).toMatchObject({ sqlState: '23505', constraint: 'events_event_id_key', retryable: false });
    expect(toDataApiError(Object.assign(new Error('ERROR: canceling statement due to lock timeout; SQLState: 55P03'), {})).retryable).toBe(true);
    expect(toDataApiError(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' })).retryable).toBe(true);
  });

  it('recognises the PostgreSQL errors the core branches on when the message carries no SQLSTATE', () => {
    const bare = (message: string) => toDataApiError(Object.assign(new Error(message), { name: 'BadRequestException' }));
    expect(bare('ERROR: duplicate key value violates unique constraint "events_event_id_key"\n  Position: 12')).toMatchObject({
      sqlState: '23505',
      constraint: 'events_event_id_key',
      retryable: false,
    });
    expect(bare('ERROR: canceling statement due to lock timeout')).toMatchObject({ sqlState: '55P03', retryable: true });
    expect(bare('ERROR: could not serialize access due to concurrent update')).toMatchObject({ sqlState: '40001', retryable: true });
    expect(bare('ERROR: deadlock detected')).toMatchObject({ sqlState: '40P01', retryable: true });
    // Any other statement error is the statement's fault: not retried as if the connection were lost.
    expect(bare('ERROR: syntax error at or near "selec"')).toMatchObject({ sqlState: 'XX000', retryable: false });
    expect(bare('FATAL: terminating connection due to administrator command')).toMatchObject({ sqlState: '57P01', retryable: true });
    // The SDK error's HTTP response is not kept (it is large, and it is no one's business in a log).
    const mapped = toDataApiError(Object.assign(new Error('ERROR: boom'), { name: 'BadRequestException', $response: { body: 'x' }, $metadata: { requestId: 'r-1' } }));
    expect(mapped.cause).toEqual({ name: 'BadRequestException', message: 'ERROR: boom', requestId: 'r-1' });
  });
});
