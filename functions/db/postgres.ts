import postgres from 'postgres';
import { DatabaseError } from '../core/errors.ts';
import type { Db, Row, TransactionOptions, Tx } from './types.ts';

export interface PostgresDbOptions {
  url: string;
  /** Connections in this process's pool. A Lambda container serves one request at a time: keep it small there. */
  max?: number;
  applicationName?: string;
  connectTimeoutSeconds?: number;
}

type Client = postgres.Sql<Record<string, never>>;

interface Slot {
  client: Client;
  /** Bumped every time the slot's connection closes. */
  generation: number;
  /** The connection closed since the client was made: replace the client before the next use. */
  dirty: boolean;
}

/**
 * The postgres.js driver.
 *
 * Why a pool of single-connection clients instead of postgres.js's own pool and `sql.begin()`:
 * when the server terminates a connection inside a transaction (`pg_terminate_backend`, a failover,
 * `idle_in_transaction_session_timeout`), postgres.js 3.4.9's `begin()` issues its ROLLBACK on the
 * dead connection, which surfaced as an uncaught exception (a dead Lambda container), and `reserve()`
 * followed by `release()` put the closed connection back into the open queue, after which the pool
 * hung. A client with `max: 1` that we hand to one transaction at a time has neither problem: after
 * a connection error we skip the ROLLBACK (the server has already rolled back) and the client
 * reconnects by itself on its next query.
 *
 * That reconnect is also a hazard: a statement issued after the connection died mid-transaction
 * would run on the *new* connection, outside any transaction, in autocommit. Each slot therefore
 * counts its connection closes, and a transaction refuses to send anything (a statement or COMMIT)
 * once the count moved since its BEGIN. The close is processed in an I/O callback, so it cannot slip
 * between the check and the dispatch of a statement, which happen in the same microtask chain; a
 * statement already written to the dying socket fails with CONNECTION_CLOSED.
 *
 * `patches/postgres+3.4.9.patch` additionally guards the
 * deferred socket write that crashed the process (upstream issues #1154, #1208).
 * test/int/postgres-driver.int.test.ts reproduces both failures.
 */
export function createPostgresDb(options: PostgresDbOptions): Db {
  const max = options.max ?? 10;
  const idle: Slot[] = [];
  const waiters: Array<(slot: Slot) => void> = [];
  let closing = false;
  const all: Slot[] = [];

  const newClient = (slot: Slot): Client =>
    postgres(options.url, {
      max: 1,
      onclose: () => {
        slot.generation += 1;
        slot.dirty = true;
      },
      prepare: true,
      onnotice: () => {},
      connect_timeout: options.connectTimeoutSeconds ?? 10,
      connection: { application_name: options.applicationName ?? 'ledgerline' },
      types: {
        // bigint as a JS number: exact up to 2^53, and refused beyond rather than rounded.
        int8: {
          to: 20,
          from: [20],
          serialize: (x: unknown) => String(x),
          parse: (x: string) => {
            const n = Number(x);
            if (!Number.isSafeInteger(n)) throw new RangeError(`bigint ${x} exceeds 2^53; cast it to text`);
            return n;
          },
        },
        // The Db contract passes JSON parameters as JSON text; never encode a string a second time.
        jsonb: {
          to: 3802,
          from: [114, 3802],
          serialize: (x: unknown) => (typeof x === 'string' ? x : JSON.stringify(x)),
          parse: (x: string) => JSON.parse(x) as unknown,
        },
      },
    }) as unknown as Client;
  const newSlot = (): Slot => {
    const slot = { generation: 0, dirty: false } as Slot;
    slot.client = newClient(slot);
    return slot;
  };
  /**
   * A client whose connection closed with statements in flight (several, when they were pipelined)
   * may deliver that connection's last error to the next statement it runs, on its new connection
   * (postgres.js 3.4.9; test/int/postgres-driver.int.test.ts). A fresh client per connection loss
   * keeps one transaction's failure from surfacing in the next.
   */
  const fresh = (slot: Slot): Slot => {
    if (!slot.dirty) return slot;
    const old = slot.client;
    void old.end({ timeout: 0 }).catch(() => undefined);
    slot.client = newClient(slot);
    slot.dirty = false;
    return slot;
  };

  async function acquire(): Promise<Slot> {
    if (closing) throw new DatabaseError('the database pool is closed');
    const slot = idle.pop();
    if (slot) return fresh(slot);
    if (all.length < max) {
      const fresh = newSlot();
      all.push(fresh);
      return fresh;
    }
    return new Promise((resolve) => waiters.push(resolve));
  }

  function release(slot: Slot): void {
    const next = waiters.shift();
    if (next) next(fresh(slot));
    else idle.push(slot);
  }

  async function run<T extends object>(client: Client, text: string, params: readonly unknown[]): Promise<T[]> {
    try {
      const rows = await client.unsafe(text, params as never[], { prepare: true });
      return rows as unknown as T[];
    } catch (error) {
      throw toDatabaseError(error);
    }
  }

  return {
    async query<T extends object = Row>(text: string, params: readonly unknown[] = []): Promise<T[]> {
      const slot = await acquire();
      try {
        return await run<T>(slot.client, text, params);
      } finally {
        release(slot);
      }
    },

    async transaction<T>(fn: (tx: Tx) => Promise<T>, txOptions: TransactionOptions = {}): Promise<T> {
      const slot = await acquire();
      const { client } = slot;
      let generation = -1;
      const onSameConnection = <T>(send: () => Promise<T>): Promise<T> =>
        slot.generation === generation
          ? send()
          : Promise.reject(
              new DatabaseError('the connection was lost during the transaction; it was rolled back', {
                cause: { code: 'CONNECTION_LOST_IN_TRANSACTION' },
              }),
            );
      try {
        generation = slot.generation;
        // BEGIN is not awaited: the callback's first statements are written behind it in the same
        // packet (postgres.js coalesces what is sent in one tick), saving a round trip per
        // transaction. Safe because BEGIN on an open connection cannot fail but with the
        // connection, and then every statement behind it fails too; it is awaited before COMMIT.
        const began = run(client, `begin isolation level ${txOptions.isolation ?? 'read committed'}`, []);
        began.catch(() => undefined);
        const tx: Tx = { query: (text, params = []) => onSameConnection(() => run(client, text, params)) };
        let result: T;
        try {
          result = await fn(tx);
        } finally {
          await began;
        }
        await onSameConnection(() => run(client, 'commit', []));
        return result;
      } catch (error) {
        if (!isConnectionLost(error) && slot.generation === generation) {
          // A failed ROLLBACK means the connection is gone; the server rolls back by itself.
          await run(client, 'rollback', []).catch(() => undefined);
        }
        throw error;
      } finally {
        release(slot);
      }
    },

    async close(): Promise<void> {
      closing = true;
      await Promise.all(all.map((slot) => slot.client.end({ timeout: 5 })));
    },
  };
}

function isConnectionLost(error: unknown): boolean {
  const cause = error instanceof DatabaseError ? error.cause : error;
  const e = cause as { severity?: string; code?: string } | undefined;
  return (
    e?.severity === 'FATAL' ||
    e?.severity === 'PANIC' ||
    (typeof e?.code === 'string' && e.code.startsWith('CONNECTION_'))
  );
}

export function toDatabaseError(error: unknown): DatabaseError {
  if (error instanceof DatabaseError) return error;
  const e = error as { code?: string; constraint_name?: string; message?: string; severity?: string };
  const isSqlState = typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code);
  return new DatabaseError(e?.message ?? 'database error', {
    ...(isSqlState ? { sqlState: e.code } : {}),
    ...(e?.constraint_name ? { constraint: e.constraint_name } : {}),
    cause: error,
  });
}
