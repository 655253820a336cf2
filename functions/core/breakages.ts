/**
 * Deliberate breakages of the protocols, switched on only by the fault-injection tests to prove that
 * those tests can see each bug (a test that cannot fail proves nothing), and by the bench for the
 * baselines that are this system without one protection (asyncXminHorizon, randomEventIds).
 * Production code never sets them; each is checked at exactly one place, named after the protection
 * it removes.
 */
export interface Breakages {
  /** Append: a non-blocking try-lock, and when the projection is rebuilding, skip it without a skip row (the articles' design). */
  appendTryLockNoSkipRow: boolean;
  /** Append: read the projection states in the same statement that takes the shared locks (stale snapshot). */
  appendStateInLockStatement: boolean;
  /** Replay and drain: delete skip rows by position range instead of the exact positions applied. */
  skipDeleteByRange: boolean;
  /** Flip: no exclusive lock, so in-flight appends that decided to skip can commit after the flip. */
  flipWithoutLock: boolean;
  /** Rebuild batches: check the fencing token with a plain SELECT (no row lock). */
  fencingPlainSelect: boolean;
  /** Async projector: keep no gaps; the checkpoint is the highest position seen. */
  asyncHighestSeen: boolean;
  /** Async projector: read only events whose transaction is below the snapshot's xmin horizon. */
  asyncXminHorizon: boolean;
  /** Async projector: bound new gaps by the reading snapshot's xmax instead of a fresh xid. */
  asyncSnapshotXmaxBound: boolean;
  /** Append: random (version 4) ids for the events the store names, instead of time-ordered ones (event-id.ts); the bench's baseline in scenario 6. */
  randomEventIds: boolean;
}

const none: Breakages = {
  appendTryLockNoSkipRow: false,
  appendStateInLockStatement: false,
  skipDeleteByRange: false,
  flipWithoutLock: false,
  fencingPlainSelect: false,
  asyncHighestSeen: false,
  asyncXminHorizon: false,
  asyncSnapshotXmaxBound: false,
  randomEventIds: false,
};

export const breakages: Breakages = { ...none };

export function resetBreakages(): void {
  Object.assign(breakages, none);
}
