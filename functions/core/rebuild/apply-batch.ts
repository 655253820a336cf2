import { inOrder, type Tx } from '../../db/types.ts';
import { breakages } from '../breakages.ts';
import type { StoredEvent } from '../event-store/types.ts';
import { POSITIONS_SQL, tableFor, type ProjectionDefinition } from '../projections/definition.ts';
import type { RebuildRow } from './types.ts';

/**
 * Applies a batch to the version being rebuilt and deletes the skip rows of exactly those events,
 * by their positions, in the same transaction: the invariant "a skip row exists iff its event is
 * committed and not yet applied" holds at every commit.
 *
 * Never by a range: a skip row whose append drew a lower position but committed after this batch's
 * read is inside any range up to the last position applied, yet its event was not in the batch. A
 * range delete would drop it unapplied (`breakages.skipDeleteByRange` restores that bug).
 */
export async function applyBatch(
  tx: Tx,
  definition: ProjectionDefinition,
  rebuild: RebuildRow,
  events: readonly StoredEvent[],
): Promise<void> {
  if (events.length === 0) return;
  // Sent together (one round trip): neither needs the other's result, and the server runs them in
  // this order inside the transaction, so both commit or neither does.
  const applied = definition.apply(tx, tableFor(definition.name, rebuild.version), events);
  const deleted = breakages.skipDeleteByRange
    ? tx.query(
        'delete from projection_skips where projection = $1 and version = $2 and global_position <= $3',
        [definition.name, rebuild.version, events[events.length - 1]!.globalPosition],
      )
    : // The batch's range is the index condition and `= any(array)` keeps exactly its positions: an
      // IN over the set-returning function was planned as a nested loop over every skip row of the
      // version (seconds per batch at 50k rows), and without the range the array was a filter over
      // every skip row of the version, dead ones of earlier batches included.
      tx.query(
        `delete from projection_skips
          where projection = $1 and version = $2
            and global_position between $4 and $5
            and global_position = any (${POSITIONS_SQL('$3::jsonb')})`,
        [
          definition.name,
          rebuild.version,
          JSON.stringify(events.map((e) => e.globalPosition)),
          // In position order (apply's contract; the range breakage above relies on it too).
          events[0]!.globalPosition,
          events[events.length - 1]!.globalPosition,
        ],
      );
  await inOrder([applied, deleted]);
}
