import type { Tx } from '../../db/types.ts';
import { breakages } from '../breakages.ts';
import type { StoredEvent } from '../event-store/types.ts';
import { handles, LOCK_KEY_SQL, tableFor, type ProjectionDefinition } from './definition.ts';

export interface InlineVersionState {
  name: string;
  version: number;
  state: 'live' | 'rebuilding';
}

/**
 * Append steps 2 and 3 (DESIGN.md 3.1): take the shared transaction-level advisory lock of every
 * inline projection this append feeds, then, in a NEW statement, read their versions' states.
 *
 * Why two statements: a READ COMMITTED statement reads with a snapshot taken when it starts. If the
 * state were read in the statement that waits for the lock, an append queued behind a rebuild's
 * Start (or Flip) would wake up holding a state from before that transaction committed, skip
 * nothing, and its event would be lost to the new version.
 *
 * Why the lock is held to commit: Start and Flip take the same key exclusively. An append that read
 * `rebuilding` and wrote skip rows cannot commit after the Flip's last drain, because the Flip waits
 * for its shared lock; and an append that read `live` before Start has committed before Start
 * records its replay target, so replay covers it.
 */
export async function lockAndReadStates(tx: Tx, names: readonly string[]): Promise<InlineVersionState[]> {
  if (names.length === 0) return [];
  const sorted = JSON.stringify([...names].sort());
  if (breakages.appendStateInLockStatement) {
    return tx.query<InlineVersionState>(
      `with locks as materialized (
         select pg_advisory_xact_lock_shared(${LOCK_KEY_SQL('n')}) from jsonb_array_elements_text($1::jsonb) as n
       )
       select name, version, state from projections
        where name in (select jsonb_array_elements_text($1::jsonb))
          and kind = 'inline' and state in ('live', 'rebuilding')
          and (select count(*) from locks) >= 0`,
      [sorted],
    );
  }
  const lockFunction = breakages.appendTryLockNoSkipRow
    ? 'pg_try_advisory_xact_lock_shared'
    : 'pg_advisory_xact_lock_shared';
  await tx.query(
    `select ${lockFunction}(${LOCK_KEY_SQL('n')}) from jsonb_array_elements_text($1::jsonb) as n`,
    [sorted],
  );
  return tx.query<InlineVersionState>(
    `select name, version, state from projections
      where name in (select jsonb_array_elements_text($1::jsonb))
        and kind = 'inline' and state in ('live', 'rebuilding')`,
    [sorted],
  );
}

/**
 * Append step 5: a live version applies the events inline; a rebuilding version gets one skip row
 * per event instead, in this same transaction, so the skip row exists iff the event commits.
 */
export async function applyOrSkip(
  tx: Tx,
  projections: readonly ProjectionDefinition[],
  states: readonly InlineVersionState[],
  events: readonly StoredEvent[],
): Promise<void> {
  const skips: Array<[string, number, number]> = [];
  for (const state of states) {
    const definition = projections.find((p) => p.name === state.name);
    if (!definition) continue;
    const relevant = events.filter((e) => handles(definition, e.type));
    if (relevant.length === 0) continue;
    if (state.state === 'live') {
      await definition.apply(tx, tableFor(state.name, state.version), relevant);
    } else if (!breakages.appendTryLockNoSkipRow) {
      for (const e of relevant) skips.push([state.name, state.version, e.globalPosition]);
    }
  }
  if (skips.length > 0) {
    await tx.query(
      `insert into projection_skips (projection, version, global_position)
       select s->>0, (s->>1)::int, (s->>2)::bigint from jsonb_array_elements($1::jsonb) as s`,
      [JSON.stringify(skips)],
    );
  }
}
