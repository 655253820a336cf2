import { randomUUID } from 'node:crypto';
import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import type { Db } from '../db/types.ts';
import { acquireRebuild } from '../core/rebuild/acquire.ts';
import type { RebuildStarter } from '../core/rebuild/starter.ts';
import type { RebuildLease } from '../core/rebuild/types.ts';
import type { RebuildInput } from './rebuild-steps.ts';

/**
 * Starts rebuilds as Step Functions executions: the API acquires the rebuild (so a second request
 * gets 409 at once), then starts the state machine with the lease. The execution is named after the
 * lease (rebuild id and fencing token): one execution per lease, and a resumed rebuild (a takeover
 * bumps the token) gets a new name, where the rebuild id alone collided with the failed execution's
 * name (Step Functions keeps names unique for 90 days: ExecutionAlreadyExists).
 */
export function executionName(lease: RebuildLease): string {
  return `rebuild-${lease.rebuildId}-t${lease.fencingToken}`;
}

export function stepFunctionsRebuilds(db: Db, sfn: SFNClient, stateMachineArn: string): RebuildStarter {
  return {
    async start(definition, mode, options = {}) {
      const { lease, rebuild } = await acquireRebuild(db, definition, { owner: `api-${randomUUID()}`, mode, ...options });
      // A takeover keeps the rebuild's own mode, whatever the request said.
      const input: RebuildInput = { projection: definition.name, mode: rebuild.mode, lease };
      const execution = await sfn.send(
        new StartExecutionCommand({ stateMachineArn, name: executionName(lease), input: JSON.stringify(input) }),
      );
      return { rebuildId: lease.rebuildId, version: rebuild.version, mode: rebuild.mode, executionArn: execution.executionArn! };
    },
  };
}
