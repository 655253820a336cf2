import { randomUUID } from 'node:crypto';
import type { Db } from '../db/types.ts';
import { AppError } from '../core/errors.ts';
import { acquireRebuild } from '../core/rebuild/acquire.ts';
import { recordRebuildError } from '../core/rebuild/cancel.ts';
import { drain } from '../core/rebuild/drain.ts';
import { FencingTokenLostError, ProjectionNotFoundError } from '../core/rebuild/errors.ts';
import { flipRebuild } from '../core/rebuild/flip.ts';
import { releaseRebuild } from '../core/rebuild/release.ts';
import { replay } from '../core/rebuild/replay.ts';
import { startRebuild } from '../core/rebuild/start.ts';
import type { RebuildLease, RebuildMode } from '../core/rebuild/types.ts';
import { projectionNamed } from '../domain/projections.ts';

/** The state that flows through the rebuild state machine (JSONPath). */
export interface RebuildInput {
  projection: string;
  mode?: RebuildMode;
  lease?: RebuildLease;
  /** Replay/drain loop iterations in this execution; past a bound the workflow continues as a new execution. */
  iterations?: number;
  lockTimeoutMs?: number;
  done?: boolean;
  flipped?: boolean;
  /** Skip rows the last Flip applied under its lock, while every writer of the projection waited. */
  flipSkipsUnderLock?: number;
  waitSeconds?: number;
}

export type Step = 'acquire' | 'start' | 'replay' | 'drain' | 'flip' | 'release' | 'fail';

/** Lambda time budget per replay/drain call: well inside the 15-minute limit, leaving time to commit. */
const STEP_BUDGET_MS = Number(process.env.REBUILD_STEP_BUDGET_MS ?? 600_000);

/**
 * Errors Step Functions may retry (Retry on `TransientError`): lock timeouts, lost connections,
 * serialization failures. Everything else goes to the Catch path. The error's name is what the state
 * machine matches.
 */
export class TransientError extends Error {
  override name = 'TransientError';
}

/**
 * One handler for every Task of the rebuild state machine: `{ step, state }` in, the next state out.
 * Each step is one core function; the handler only adapts it.
 */
export function createRebuildStepHandler(deps: { db: Db; budgetMs?: number; batchSize?: number }) {
  const budget = { maxMs: deps.budgetMs ?? STEP_BUDGET_MS, ...(deps.batchSize ? { batchSize: deps.batchSize } : {}) };
  return async (event: {
    step: Step;
    state: RebuildInput;
    error?: { Error?: string; Cause?: string };
    /** The execution's id (`$$.Execution.Id`), which the state machine sends to Acquire. */
    execution?: string;
  }): Promise<RebuildInput> => {
    const { db } = deps;
    const state = event.state;
    const definition = projectionNamed(state.projection);
    if (!definition) throw new ProjectionNotFoundError(state.projection);
    try {
      switch (event.step) {
        case 'acquire': {
          if (state.lease) return state;
          // Owned by the execution: Acquire retried after its commit (the answer lost with the
          // connection, a TransientError, or with Lambda's response) is given the same rebuild
          // again instead of REBUILD_IN_PROGRESS until its own lease expires (acquire.ts).
          const owner = `sfn-${event.execution ?? randomUUID()}`;
          const { lease } = await acquireRebuild(db, definition, { owner, mode: state.mode ?? 'blue-green' });
          return { ...state, lease, iterations: 0 };
        }
        case 'start':
          await startRebuild(db, definition, lease(state));
          return state;
        case 'replay': {
          const r = await replay(db, definition, lease(state), budget);
          return { ...state, done: r.done, iterations: (state.iterations ?? 0) + 1 };
        }
        case 'drain':
          await drain(db, definition, lease(state), budget);
          return { ...state, iterations: (state.iterations ?? 0) + 1 };
        case 'flip': {
          const lockTimeoutMs = state.lockTimeoutMs ?? 100;
          // Drain first, in this invocation: between the Drain state's last batch and this one
          // lie a state transition and a Lambda invocation (a cold start, a new connection: tens
          // of ms to seconds), and every skip row written meanwhile would otherwise be applied
          // under Flip's lock, with every writer of the projection queued behind it. Here the
          // gap to the lock is one round trip. Safe as the Drain step is: drain's batches need no
          // lock (each applies committed skip rows and deletes exactly those, fenced), and Flip
          // still applies whatever is left under its lock.
          // A Flip task retried after its flip committed finds the lease ended. Drain's fencing
          // failure is left to flipRebuild, which answers `done` for a rebuild that is (go on to
          // Release) and fails the same check otherwise.
          await drain(db, definition, lease(state), budget).catch((error: unknown) => {
            if (!(error instanceof FencingTokenLostError)) throw error;
          });
          const flip = await flipRebuild(db, definition, lease(state), { lockTimeoutMs });
          // On a timeout: drain again after a short wait, with a longer timeout (up to the appends' own 5 s).
          return {
            ...state,
            flipped: flip.flipped || flip.phase !== 'draining',
            flipSkipsUnderLock: flip.skipsDrained,
            lockTimeoutMs: Math.min(lockTimeoutMs * 2, 5_000),
            waitSeconds: Math.max(1, Math.round(lockTimeoutMs / 1000)),
          };
        }
        case 'release':
          await releaseRebuild(db, definition, lease(state).rebuildId);
          return state;
        case 'fail': {
          const message = `${event.error?.Error ?? 'Error'}: ${event.error?.Cause ?? ''}`.slice(0, 2000);
          if (state.lease) await recordRebuildError(db, state.lease.rebuildId, message);
          return state;
        }
      }
    } catch (error) {
      if (error instanceof AppError && error.retryable) throw new TransientError(error.message, { cause: error });
      throw error;
    }
  };
}

function lease(state: RebuildInput): RebuildLease {
  if (!state.lease) throw new AppError('LEASE_MISSING', 'internal', 'the workflow state has no lease');
  return state.lease;
}
