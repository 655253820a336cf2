import { projections } from '@event-driven-io/emmett';
import { getPostgreSQLEventStore, postgreSQLRawSQLProjection } from '@event-driven-io/emmett-postgresql';
import { literal, plainString, SQL } from '@event-driven-io/dumbo';
import pg from 'pg';
import { ORDER_SUMMARY_COLUMNS, ORDER_SUMMARY_MERGE } from '../functions/domain/order-summary.ts';
import { sectionDoc } from './lib.ts';

/**
 * Emmett (`@event-driven-io/emmett-postgresql`), the leading TypeScript event store, set up the way
 * its documentation recommends for a read model updated in the append's transaction: an inline
 * raw-SQL projection. The projection does the same upsert as ledgerline's order summary and the
 * raw baseline (the same section document, the same merge), on its own pool of `concurrency`
 * connections.
 */
export async function emmettStore(url: string, concurrency: number) {
  const pool = new pg.Pool({ connectionString: url, max: concurrency });
  // An idle client's error (the bench drops the database with FORCE once a run ends) is an 'error'
  // event on the pool, which without a listener ends the process, as one bench run did.
  pool.on('error', () => undefined);
  await pool.query(`create table if not exists emmett_order_summary (${ORDER_SUMMARY_COLUMNS})`);
  const summary = postgreSQLRawSQLProjection({
    name: 'order_summary',
    canHandle: ['OrderCreated', 'InventoryReserved', 'PaymentProcessed', 'ShippingCalculated', 'LoyaltyPointsUpdated'],
    evolve: (event: { type: string; data: Record<string, unknown>; metadata: Record<string, unknown> }) => {
      const id = String(event.metadata.messageId ?? event.metadata.eventId);
      const { name, doc } = sectionDoc({ id, type: event.type, data: event.data });
      return SQL`insert into emmett_order_summary as cur (order_id, sections, events_applied, last_global_position)
                 values (${literal(String(event.data.orderId))}, ${literal(JSON.stringify({ [name]: doc }))}::jsonb, 1, ${plainString(String(event.metadata.globalPosition))})
                 on conflict (order_id) do update set ${plainString(ORDER_SUMMARY_MERGE)}`;
    },
  } as never);
  const store = getPostgreSQLEventStore(url, {
    connectionOptions: { pooled: true, pool } as never,
    projections: projections.inline([summary]),
  });
  return {
    append: (streamName: string, event: { type: string; data: Record<string, unknown> }) => store.appendToStream(streamName, [event as never]),
    close: async () => {
      await store.close();
      await pool.end().catch(() => undefined);
    },
  };
}
