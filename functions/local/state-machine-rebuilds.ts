import { randomUUID } from 'node:crypto';
import type { Db } from '../db/types.ts';
import type { Log } from '../core/log.ts';
import { acquireRebuild } from '../core/rebuild/acquire.ts';
import type { RebuildStarter } from '../core/rebuild/starter.ts';
import type { localRebuildRunner } from './rebuild-state-machine.ts';

/**
 * The local twin of the Step Functions starter: acquire (so a second request gets 409 at once),
 * then run the synthesized state machine locally with the lease, in the background.
 */
export function stateMachineRebuilds(db: Db, runner: ReturnType<typeof localRebuildRunner>, log: Log): RebuildStarter & { idle(): Promise<void> } {
  const running = new Set<Promise<unknown>>();
  return {
    async start(definition, mode) {
      const { lease, rebuild } = await acquireRebuild(db, definition, { owner: `local-api-${randomUUID()}`, mode });
      const execution = runner
        .run({ projection: definition.name, mode, lease })
        .then(() => log.info('rebuild finished', { rebuildId: lease.rebuildId }))
        .catch((error: unknown) => log.error('rebuild execution failed', { rebuildId: lease.rebuildId, error: String(error) }))
        .finally(() => running.delete(execution));
      running.add(execution);
      return { rebuildId: lease.rebuildId, version: rebuild.version, mode: rebuild.mode, executionArn: `local:rebuild-${lease.rebuildId}` };
    },
    async idle() {
      while (running.size > 0) await Promise.allSettled([...running]);
      await runner.idle();
    },
  };
}
