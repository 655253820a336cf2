import type { Tx } from '../../db/types.ts';
import type { StoredEvent } from '../event-store/types.ts';

export type RebuildMode = 'blue-green' | 'in-place';
export type RebuildPhase = 'starting' | 'replaying' | 'draining' | 'done' | 'failed' | 'cancelled';
export const ACTIVE_PHASES: readonly RebuildPhase[] = ['starting', 'replaying', 'draining'];

export interface RebuildRow {
  rebuild_id: string;
  projection: string;
  version: number;
  previous_version: number | null;
  mode: RebuildMode;
  phase: RebuildPhase;
  target_position: number | null;
  checkpoint: number;
  events_replayed: number;
  skips_drained: number;
  lease_owner: string | null;
  fencing_token: number;
  attempts: number;
  error: string | null;
  started_at: string;
  finished_at: string | null;
}

/** What a worker holds after acquiring a rebuild: every step presents it. */
export interface RebuildLease {
  rebuildId: string;
  owner: string;
  fencingToken: number;
  /** How long each step extends the lease; a worker silent for longer can be taken over. */
  leaseMs: number;
}

/**
 * Fault-injection points for tests: called inside a batch's transaction after the fencing check
 * and the read, before commit (before the apply, except in the replay and drain of a projection
 * that applies in SQL, where read, apply and skip deletion are one statement), with the batch's
 * size. A hook may delay (a slow
 * worker) or throw (a crash mid-batch).
 */
export interface RebuildHooks {
  insideBatch?(step: 'replay' | 'drain' | 'flip', tx: Tx, size: number): Promise<void>;
}

export const DEFAULT_LEASE_MS = 60_000;
