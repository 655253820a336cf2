import { randomUUID } from 'node:crypto';
import type { Db } from '../db/types.ts';
import type { Log } from '../core/log.ts';
import { acquireRebuild } from '../core/rebuild/acquire.ts';
import { recordRebuildError } from '../core/rebuild/cancel.ts';
import type { ProjectionDefinition } from '../core/projections/definition.ts';
import { continueRebuild } from '../core/rebuild/run.ts';
import type { RebuildStarter } from '../core/rebuild/starter.ts';
import type { RebuildLease, RebuildMode } from '../core/rebuild/types.ts';
import type { localRebuildRunner } from './rebuild-state-machine.ts';

type Run = (definition: ProjectionDefinition, mode: RebuildMode, lease: RebuildLease) => Promise<unknown>;

/**
 * The local twin of the Step Functions starter: acquire (so a second request gets 409 at once),
 * then run the rebuild in the background with the lease. `idle()` waits for every run to end.
 */
function backgroundRebuilds(db: Db, run: Run, options: { executionArns?: boolean; idle?: () => Promise<void> } = {}): RebuildStarter & { idle(): Promise<void> } {
  const running = new Set<Promise<unknown>>();
  return {
    async start(definition, mode, starting = {}) {
      const { lease, rebuild } = await acquireRebuild(db, definition, { owner: `local-${randomUUID()}`, mode, ...starting });
      const execution = run(definition, rebuild.mode, lease).finally(() => running.delete(execution));
      running.add(execution);
      return {
        rebuildId: lease.rebuildId,
        version: rebuild.version,
        mode: rebuild.mode,
        ...(options.executionArns ? { executionArn: `local:rebuild-${lease.rebuildId}` } : {}),
      };
    },
    async idle() {
      while (running.size > 0) await Promise.allSettled([...running]);
      await options.idle?.();
    },
  };
}

/** `npm start`: the synthesized state machine, run locally (it records failures itself). */
export function stateMachineRebuilds(db: Db, runner: ReturnType<typeof localRebuildRunner>, log: Log): RebuildStarter & { idle(): Promise<void> } {
  return backgroundRebuilds(
    db,
    (definition, mode, lease) =>
      runner
        .run({ projection: definition.name, mode, lease })
        .then(() => log.info('rebuild finished', { rebuildId: lease.rebuildId }))
        .catch((error: unknown) => log.error('rebuild execution failed', { rebuildId: lease.rebuildId, error: String(error) })),
    { executionArns: true, idle: () => runner.idle() },
  );
}

/** The core's rebuild loop in this process: the HTTP handler's tests, which need no CDK synthesis. */
export function inProcessRebuilds(db: Db, log: Log): RebuildStarter & { idle(): Promise<void> } {
  return backgroundRebuilds(db, (definition, _mode, lease) =>
    continueRebuild(db, definition, lease).catch(async (error: unknown) => {
      log.error('rebuild failed', { rebuildId: lease.rebuildId, error: String(error) });
      await recordRebuildError(db, lease.rebuildId, String(error)).catch(() => undefined);
    }),
  );
}
