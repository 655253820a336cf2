import type { ProjectionDefinition } from '../projections/definition.ts';
import type { RebuildMode } from './types.ts';

/**
 * How the API starts a rebuild: a Step Functions execution in AWS, the local runner on a laptop.
 * Both acquire the rebuild first, so a second request gets REBUILD_IN_PROGRESS synchronously.
 */
export interface RebuildStarter {
  /**
   * `resume`: take over exactly this unfinished rebuild (its lease must have expired), or fail with
   * REBUILD_NOT_RESUMABLE / REBUILD_NOT_FOUND; never start another (acquire.ts).
   */
  start(definition: ProjectionDefinition, mode: RebuildMode, options?: { resume?: string }): Promise<{ rebuildId: string; version: number; mode: RebuildMode; executionArn?: string }>;
}
