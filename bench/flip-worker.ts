import { parentPort, workerData } from 'node:worker_threads';
import { acquireRebuild, drain, flipRebuild, releaseRebuild, replay, startRebuild } from '../functions/core/rebuild/index.ts';
import { createPostgresDb } from '../functions/db/postgres.ts';
import { orderSummary } from '../functions/domain/order-summary.ts';
import { sleep } from './lib.ts';

/**
 * The rebuild worker of the flip-stall scenario, on its own thread: in production a rebuild runs in
 * its own Lambda, so its JS work (the fold of each replay and drain batch) must not block the
 * writers' event loop and be counted as their latency. Times are absolute (timeOrigin + now), as
 * the writers' thread records them.
 */
const { url, rebuilds, settleMs } = workerData as { url: string; rebuilds: number; settleMs: number };
const at = () => performance.timeOrigin + performance.now();
const db = createPostgresDb({ url, max: 4, applicationName: 'ledgerline-bench-rebuild' });
/** Each Start and each Flip attempt: [from, to, which]. */
const windows: Array<[number, number, 'start' | 'flip']> = [];
const spans: Array<[number, number]> = [];
let flipAttempts = 0;
try {
  for (let r = 0; r < rebuilds; r++) {
    const r0 = at();
    const { lease } = await acquireRebuild(db, orderSummary, { owner: `bench-${r}`, mode: 'blue-green' });
    const s0 = at();
    await startRebuild(db, orderSummary, lease);
    windows.push([s0, at(), 'start']);
    await sleep(settleMs);
    while (!(await replay(db, orderSummary, lease)).done);
    let lockTimeoutMs = 100;
    for (;;) {
      await drain(db, orderSummary, lease);
      const f0 = at();
      const flip = await flipRebuild(db, orderSummary, lease, { lockTimeoutMs });
      windows.push([f0, at(), 'flip']);
      flipAttempts++;
      if (flip.flipped || flip.phase !== 'draining') break;
      lockTimeoutMs = Math.min(lockTimeoutMs * 2, 5_000);
    }
    await releaseRebuild(db, orderSummary, lease.rebuildId);
    spans.push([r0, at()]);
    await sleep(settleMs);
  }
} finally {
  await db.close();
}
parentPort!.postMessage({ windows, spans, flipAttempts });
