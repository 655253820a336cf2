import { randomUUID } from 'node:crypto';
import type { Db } from '../db/types.ts';
import type { Log } from '../core/log.ts';
import { acquireRebuild } from '../core/rebuild/acquire.ts';
import { recordRebuildError } from '../core/rebuild/cancel.ts';
import { continueRebuild } from '../core/rebuild/run.ts';
import type { RebuildStarter } from '../core/rebuild/starter.ts';

/** Runs rebuilds in this process (tests, and the local stack before its state machine runner). */
export function inProcessRebuilds(db: Db, log: Log): RebuildStarter & { idle(): Promise<void> } {
  const running = new Set<Promise<void>>();
  return {
    async start(definition, mode) {
      const { lease, rebuild } = await acquireRebuild(db, definition, { owner: `local-${randomUUID()}`, mode });
      const run = continueRebuild(db, definition, lease)
        .catch(async (error: unknown) => {
          log.error('rebuild failed', { rebuildId: lease.rebuildId, error: String(error) });
          await recordRebuildError(db, lease.rebuildId, String(error)).catch(() => undefined);
        })
        .finally(() => running.delete(run));
      running.add(run);
      return { rebuildId: lease.rebuildId, version: rebuild.version, mode: rebuild.mode };
    },
    async idle() {
      await Promise.all([...running]);
    },
  };
}
