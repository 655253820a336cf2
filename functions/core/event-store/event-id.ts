import { randomUUID } from 'node:crypto';
import { breakages } from '../breakages.ts';

/**
 * The id of an event that the store names (its caller gave none): a UUID of version 7 (RFC 9562),
 * whose first 48 bits are the Unix time in milliseconds and whose other 74 free bits are random
 * (those of a version 4 UUID from `randomUUID`, with its variant bits). Ids of one millisecond are
 * in no particular order; nothing reads an order from ids, only uniqueness (`events_event_id_key`)
 * and, for order_summary, a tie-break between sections of the same time, which both the SQL and
 * the JS twin take from the stored id.
 *
 * Why not version 4, as `randomUUID` gives: the unique index on `events.event_id` is a btree over
 * these ids, and every append inserts into it. A random id lands on a random leaf page, so on a log
 * of 100 million events (an index of about 4 GB) nearly every append changes a leaf that no recent
 * append touched: a read wherever the index is larger than the server's buffers, and, after each
 * checkpoint, a full image of the page in the WAL (8 kB) the first time it is changed. A time-ordered id lands next to the ids of the last milliseconds, on the few pages
 * that every append is writing anyway. `npm run bench` scenario 6 counts the WAL per append after a
 * checkpoint with each kind of id, on a log of 1,000,000 events: its index (about 38 MB) fits in
 * the server's buffers, so it shows the full-page images and not the reads, which only a log
 * larger than memory would.
 * Ids that callers choose (an external event's own id, a retry's) are stored as they come.
 */
export function newEventId(now = Date.now()): string {
  const random = randomUUID();
  if (breakages.randomEventIds) return random;
  const time = now.toString(16).padStart(12, '0');
  // random: xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx; the version digit is at 14.
  return `${time.slice(0, 8)}-${time.slice(8, 12)}-7${random.slice(15)}`;
}
