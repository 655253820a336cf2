import type { Tx } from '../../db/types.ts';
import type { StoredEvent } from '../event-store/types.ts';
import { handles, tableFor, type ProjectionDefinition } from './definition.ts';

export interface InlineVersionState {
  name: string;
  version: number;
  state: 'live' | 'rebuilding';
}

/**
 * The inline-projection half of an append (DESIGN.md 3.1, steps 2, 3 and 5). append.ts issues the
 * SQL; this file says what each piece must guarantee.
 *
 * Step 2, the shared transaction-level advisory lock of every inline projection the append feeds,
 * is taken first in `ledgerline_append` (migrations 003 and 004), in name order.
 *
 * Step 3, the versions' states, is read in a LATER statement of that function. A READ COMMITTED
 * statement reads with a snapshot taken when it starts. If the state were read in the statement
 * that waits for the lock, an append queued behind a rebuild's Start (or Flip) would wake up holding
 * a state from before that transaction committed, skip nothing, and its event would be lost to the
 * new version (`breakages.appendStateInLockStatement` restores that bug). Statements run by a
 * VOLATILE function each take a fresh snapshot, so one call keeps this guarantee.
 *
 * The locks are held to commit: Start and Flip take the same keys exclusively. An append that read
 * `rebuilding` and wrote skip rows cannot commit after the Flip's last drain, because the Flip waits
 * for its shared lock; and an append that read `live` before Start has committed before Start
 * records its replay target, so replay covers it.
 *
 * Step 5: a `rebuilding` version gets one skip row per event, written by the function's insert
 * statement from the states it read (so the skip row exists iff the event commits); a `live`
 * version applies the events in the same function when its projection applies in SQL (`sqlApply`,
 * migration 004), and here otherwise, in the same transaction: either way after the locks and the
 * state read, before commit.
 */
export async function applyLive(
  tx: Tx,
  projections: readonly ProjectionDefinition[],
  states: readonly InlineVersionState[],
  events: readonly StoredEvent[],
): Promise<void> {
  for (const state of states) {
    if (state.state !== 'live') continue;
    const definition = projections.find((p) => p.name === state.name);
    if (!definition) continue;
    const relevant = events.filter((e) => handles(definition, e.type));
    if (relevant.length > 0) await definition.apply(tx, tableFor(state.name, state.version), relevant);
  }
}
