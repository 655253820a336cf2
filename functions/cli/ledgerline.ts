import { parseArgs } from 'node:util';
import { awsTarget, localTarget, type Target } from './targets.ts';

/**
 * `npx ledgerline …`: the on-call tool. Exit codes: 0 done, 1 the operation failed (a rebuild
 * failed, a redrive left messages), 2 bad usage or input, 3 not found, 4 conflict (e.g. a rebuild
 * already running), 5 the target is unreachable or answered 5xx.
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, notFound: 3, conflict: 4, unavailable: 5 } as const;

const USAGE = `usage: ledgerline [--target local|aws] [--stack NAME] [--api URL] [--sqs URL] [--json] COMMAND
  projections                                   list projections: state, live version, lag, gaps, skips
  rebuild start PROJECTION [--mode blue-green|in-place] [--watch]
  rebuild status PROJECTION REBUILD_ID [--watch]
  rebuild cancel PROJECTION REBUILD_ID          abandon a blue-green rebuild (the live version stays)
  rebuild resume PROJECTION [REBUILD_ID] [--watch]
      take over that unfinished rebuild (default: the projection's) once its lease expired;
      never starts a new one
  dlq list                                      dead-letter queues and their depth
  dlq inspect ingest|failures [--max N]         read messages without consuming them
  dlq redrive ingest|failures [--dry-run] [--max N]
      ingest: back to the ingest queue; failures: resume each failed rebuild, then drop its message
Target: --target (or LEDGERLINE_TARGET) local (default; --api / LEDGERLINE_API, --sqs / LEDGERLINE_SQS)
        or aws with --stack (or LEDGERLINE_STACK) and the usual AWS credential chain.`;

class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

export async function main(argv: string[], out: (line: string) => void = console.log, err: (line: string) => void = console.error): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        target: { type: 'string' },
        stack: { type: 'string' },
        api: { type: 'string' },
        sqs: { type: 'string' },
        json: { type: 'boolean', default: false },
        mode: { type: 'string' },
        watch: { type: 'boolean', default: false },
        'dry-run': { type: 'boolean', default: false },
        max: { type: 'string' },
        interval: { type: 'string' },
        help: { type: 'boolean', default: false },
      },
    });
  } catch (e) {
    err(`${(e as Error).message}\n${USAGE}`);
    return EXIT.usage;
  }
  const { values: o, positionals: [command, sub, ...rest] } = parsed;
  if (o.help || !command) {
    (o.help ? out : err)(USAGE);
    return o.help ? EXIT.ok : EXIT.usage;
  }
  const json = o.json;
  const print = (value: unknown, human: () => string) => out(json ? JSON.stringify(value) : human());
  try {
    const target = await resolveTarget(o);
    const max = o.max === undefined ? 100 : Number(o.max);
    if (!Number.isInteger(max) || max < 1) throw new CliError('--max must be a positive integer', EXIT.usage);
    const interval = o.interval === undefined ? 500 : Number(o.interval);

    if (command === 'projections') {
      const list = expectOk(await target.api('GET', '/projections')) as Array<Record<string, any>>;
      print(list, () =>
        table(
          ['NAME', 'KIND', 'STATE', 'LIVE', 'CHECKPOINT', 'LAG', 'GAPS', 'SKIPS', 'REBUILD'],
          list.map((p) => [p.name, p.kind, p.state, p.liveVersion ?? '-', p.checkpoint, p.lag, p.openGaps, p.skipsPending, p.rebuild ? `${p.rebuild.mode} ${p.rebuild.phase} ${p.rebuild.rebuildId}` : '-']),
        ),
      );
      return EXIT.ok;
    }

    if (command === 'rebuild') {
      const projection = need(rest[0], 'PROJECTION');
      if (sub === 'start' || sub === 'resume') {
        const mode = o.mode ?? 'blue-green';
        if (mode !== 'blue-green' && mode !== 'in-place') throw new CliError('--mode must be blue-green or in-place', EXIT.usage);
        // resume names the rebuild, so that the API takes over exactly it or refuses
        // (REBUILD_NOT_RESUMABLE when it ended meanwhile); it never starts a fresh one.
        const body = sub === 'resume' ? { resume: rest[1] ?? (await unfinishedRebuild(target, projection)) } : { mode };
        const started = expectOk(await target.api('POST', `/projections/${encodeURIComponent(projection)}/rebuilds`, body));
        if (!o.watch) {
          print(started, () => `rebuild ${started.rebuildId} of ${projection} (${started.mode}, version ${started.version}) started`);
          return EXIT.ok;
        }
        if (!json) out(`rebuild ${started.rebuildId} of ${projection} (${started.mode}) started`);
        return await watch(target, projection, started.rebuildId as string, interval, json, out);
      }
      if (sub === 'status') {
        const id = need(rest[1], 'REBUILD_ID');
        if (o.watch) return await watch(target, projection, id, interval, json, out);
        const status = expectOk(await target.api('GET', `/projections/${encodeURIComponent(projection)}/rebuilds/${encodeURIComponent(id)}`));
        print(status, () => progressLine(status, undefined));
        return status.phase === 'failed' ? EXIT.failed : EXIT.ok;
      }
      if (sub === 'cancel') {
        const id = need(rest[1], 'REBUILD_ID');
        const cancelled = expectOk(await target.api('DELETE', `/projections/${encodeURIComponent(projection)}/rebuilds/${encodeURIComponent(id)}`));
        print(cancelled, () => `rebuild ${id} cancelled; the live version is untouched`);
        return EXIT.ok;
      }
      throw new CliError(`unknown rebuild command ${String(sub)}\n${USAGE}`, EXIT.usage);
    }

    if (command === 'dlq') {
      if (sub === 'list') {
        const rows = await Promise.all((['ingest', 'failures'] as const).map(async (name) => ({ name, ...(await target.depth(name)) })));
        print(rows, () => table(['DLQ', 'MESSAGES', 'IN FLIGHT', 'URL'], rows.map((r) => [r.name, r.visible, r.inFlight, r.url])));
        return EXIT.ok;
      }
      const name = need(rest[0] ?? undefined, 'ingest|failures');
      if (name !== 'ingest' && name !== 'failures') throw new CliError('the queue is ingest or failures', EXIT.usage);
      if (sub === 'inspect') {
        const letters = await target.inspect(name, max);
        print(letters, () =>
          letters.length === 0 ? `${name} DLQ is empty` : letters.map((l) => `${l.messageId} (received ${l.receiveCount}x)\n  ${l.body.slice(0, 500)}`).join('\n'),
        );
        return EXIT.ok;
      }
      if (sub === 'redrive') {
        if (name === 'ingest') {
          const result = await target.redriveIngest({ dryRun: o['dry-run'], max });
          print(result, () =>
            o['dry-run'] ? `dry run: ${result.preview.length} message(s) would move back to the ingest queue; nothing moved` : `moved ${result.moved} message(s) back to the ingest queue`,
          );
          return EXIT.ok;
        }
        const resumed: Array<{ projection: string; status: number; rebuildId?: string }> = [];
        await target.eachFailure(max, async (body) => {
          const projection = String(body.projection ?? '');
          if (o['dry-run']) {
            resumed.push({ projection, status: 0 });
            return false;
          }
          // The failed execution's rebuild, by id: if it ended meanwhile (resumed by someone else,
          // cancelled), the API refuses and nothing new starts. Without a lease it failed before
          // acquiring anything, and a start is what resuming it means.
          const rebuildId = body.state?.lease?.rebuildId;
          const reply = await target.api(
            'POST',
            `/projections/${encodeURIComponent(projection)}/rebuilds`,
            rebuildId ? { resume: rebuildId } : { mode: body.state?.mode ?? 'blue-green' },
          );
          resumed.push({ projection, status: reply.status, rebuildId: reply.body?.rebuildId });
          return reply.status === 202;
        });
        print(resumed, () => (resumed.length === 0 ? 'failures DLQ is empty' : resumed.map((r) => `${r.projection}: ${o['dry-run'] ? 'would resume' : r.status === 202 ? `resumed ${r.rebuildId}` : `not resumed (HTTP ${r.status}), message kept`}`).join('\n')));
        return resumed.every((r) => o['dry-run'] || r.status === 202) ? EXIT.ok : EXIT.failed;
      }
    }
    throw new CliError(`unknown command ${command}\n${USAGE}`, EXIT.usage);
  } catch (error) {
    if (error instanceof CliError) {
      err(error.message);
      return error.exitCode;
    }
    err(`cannot reach the target: ${(error as Error).message}`);
    return EXIT.unavailable;
  }
}

async function resolveTarget(o: { target?: string; stack?: string; api?: string; sqs?: string }): Promise<Target> {
  const kind = o.target ?? process.env.LEDGERLINE_TARGET ?? 'local';
  if (kind === 'local') {
    return localTarget(o.api ?? process.env.LEDGERLINE_API ?? 'http://127.0.0.1:3000', o.sqs ?? process.env.LEDGERLINE_SQS ?? 'http://127.0.0.1:3001');
  }
  if (kind === 'aws') {
    const stack = o.stack ?? process.env.LEDGERLINE_STACK;
    if (!stack) throw new CliError('--target aws needs --stack NAME (or LEDGERLINE_STACK)', EXIT.usage);
    return awsTarget(stack);
  }
  throw new CliError('--target must be local or aws', EXIT.usage);
}

function expectOk(reply: { status: number; body: any }): any {
  if (reply.status < 300) return reply.body;
  const message = `${reply.body?.error?.code ?? `HTTP ${reply.status}`}: ${reply.body?.error?.message ?? ''}`;
  const code = reply.status === 404 ? EXIT.notFound : reply.status === 409 ? EXIT.conflict : reply.status < 500 ? EXIT.usage : EXIT.unavailable;
  throw new CliError(message, code);
}

/** The projection's unfinished rebuild (starting, replaying or draining), as GET /projections reports it. */
async function unfinishedRebuild(target: Target, projection: string): Promise<string> {
  const list = expectOk(await target.api('GET', '/projections')) as Array<{ name: string; rebuild: { rebuildId: string } | null }>;
  const found = list.find((p) => p.name === projection);
  if (!found) throw new CliError(`no projection named ${projection}`, EXIT.notFound);
  if (!found.rebuild) throw new CliError(`${projection} has no unfinished rebuild to resume`, EXIT.notFound);
  return found.rebuild.rebuildId;
}

function need(value: string | undefined, what: string): string {
  if (!value) throw new CliError(`missing ${what}\n${USAGE}`, EXIT.usage);
  return value;
}

async function watch(target: Target, projection: string, id: string, intervalMs: number, json: boolean, out: (line: string) => void): Promise<number> {
  const started = Date.now();
  let first: { at: number; replayed: number } | undefined;
  for (;;) {
    const status = expectOk(await target.api('GET', `/projections/${encodeURIComponent(projection)}/rebuilds/${encodeURIComponent(id)}`));
    first ??= { at: Date.now(), replayed: status.replayed };
    const seconds = (Date.now() - first.at) / 1000;
    const rate = seconds > 0 ? (status.replayed - first.replayed) / seconds : 0;
    out(json ? JSON.stringify({ ...status, rate: Math.round(rate), elapsedMs: Date.now() - started }) : progressLine(status, rate));
    if (status.phase === 'done') return EXIT.ok;
    if (status.phase === 'failed') return EXIT.failed;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function progressLine(s: Record<string, any>, rate: number | undefined): string {
  const total = Number(s.total) || 0;
  const done = s.phase === 'done' ? total : Number(s.replayed) || 0;
  const fraction = total > 0 ? Math.min(1, done / total) : s.phase === 'done' ? 1 : 0;
  const bar = `${'#'.repeat(Math.round(fraction * 20))}${'-'.repeat(20 - Math.round(fraction * 20))}`;
  const eta = rate && rate > 0 && total > done ? `${Math.ceil((total - done) / rate)}s` : '-';
  return `[${bar}] ${Math.round(fraction * 100)}% ${s.phase} replayed ${done}/${total} · ${rate === undefined ? '' : `${Math.round(rate)}/s · ETA ${eta} · `}skips drained ${s.skipsDrained} pending ${s.skipsPending}${s.error ? ` · error: ${s.error}` : ''}`;
}

function table(header: string[], rows: Array<Array<string | number>>): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}
