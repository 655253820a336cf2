import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface LocalStack {
  api: string;
  sqs: string;
  dataDir: string;
  output(): string;
  /** Ctrl-C, as a terminal sends it (the whole process group); resolves true on a clean stop. */
  stop(): Promise<boolean>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** `npm start` in a child process, as a user runs it; waits for its "ready." line. */
export async function startLocalStack(options: { env?: Record<string, string>; dataDir?: string } = {}): Promise<LocalStack> {
  const [port, pgPort, sqsPort] = [await freePort(), await freePort(), await freePort()];
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'll-stack-'));
  chmodSync(dataDir, 0o755); // the server runs as the `postgres` OS user when the tests run as root
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    LEDGERLINE_PG_PORT: String(pgPort),
    LEDGERLINE_SQS_PORT: String(sqsPort),
    LEDGERLINE_DATA_DIR: join(dataDir, 'pg'),
    ...(options.dataDir ? {} : { FRESH: '1' }),
    ...options.env,
  };
  delete env.DATABASE_URL;
  const child: ChildProcess = spawn('npm', ['start'], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  for (let i = 0; i < 240 && !output.includes('ready.') && child.exitCode === null; i++) await sleep(250);
  if (!output.includes('ready.')) throw new Error(`the local stack did not start:\n${output}`);
  return {
    api: `http://127.0.0.1:${port}`,
    sqs: `http://127.0.0.1:${sqsPort}`,
    dataDir,
    output: () => output,
    async stop() {
      if (child.exitCode !== null) return output.includes('stopped');
      process.kill(-child.pid!, 'SIGINT');
      for (let i = 0; i < 80 && !output.includes('stopped'); i++) await sleep(250);
      const clean = output.includes('stopped');
      if (!clean) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      for (let i = 0; i < 40 && child.exitCode === null; i++) await sleep(250);
      return clean;
    },
  };
}
