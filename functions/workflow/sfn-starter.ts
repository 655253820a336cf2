import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import type { Db } from '../db/types.ts';
import { acquireRebuild } from '../core/rebuild/acquire.ts';
import type { RebuildStarter } from '../core/rebuild/starter.ts';
import type { RebuildInput } from './rebuild-steps.ts';

/**
 * Starts rebuilds as Step Functions executions: the API acquires the rebuild (so a second request
 * gets 409 at once), then starts the state machine with the lease; the execution is named after the
 * rebuild id, so a retried request cannot start two executions for one rebuild.
 */
export function stepFunctionsRebuilds(db: Db, sfn: SFNClient, stateMachineArn: string): RebuildStarter {
  return {
    async start(definition, mode) {
      const { lease, rebuild } = await acquireRebuild(db, definition, { owner: `api-${Date.now()}`, mode });
      const input: RebuildInput = { projection: definition.name, mode, lease };
      const execution = await sfn.send(
        new StartExecutionCommand({ stateMachineArn, name: `rebuild-${lease.rebuildId}`, input: JSON.stringify(input) }),
      );
      return { rebuildId: lease.rebuildId, version: rebuild.version, mode: rebuild.mode, executionArn: execution.executionArn! };
    },
  };
}
