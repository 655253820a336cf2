import type { ProjectionDefinition } from '../projections/definition.ts';
import type { RebuildMode } from './types.ts';

/**
 * How the API starts a rebuild: a Step Functions execution in AWS, the local runner on a laptop.
 * Both acquire the rebuild first, so a second request gets REBUILD_IN_PROGRESS synchronously.
 */
export interface RebuildStarter {
  start(definition: ProjectionDefinition, mode: RebuildMode): Promise<{ rebuildId: string; version: number; mode: RebuildMode; executionArn?: string }>;
}
