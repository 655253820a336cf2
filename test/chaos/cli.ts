/**
 * `npm run test:chaos -- --seeds N [--first-seed S]`: the fault-injection suite with more seeds than
 * CI runs (CI: 2). Each seed is one full scenario; a failing seed is printed and can be rerun alone
 * with --first-seed S --seeds 1.
 */
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    seeds: { type: 'string', default: '20' },
    'first-seed': { type: 'string', default: '1' },
  },
});
const seeds = Number(values.seeds);
const firstSeed = Number(values['first-seed']);
if (!Number.isInteger(seeds) || seeds < 1 || !Number.isInteger(firstSeed)) {
  console.error('usage: npm run test:chaos -- --seeds N [--first-seed S]');
  process.exit(2);
}
const result = spawnSync('npx', ['vitest', 'run', '--config', 'test/vitest.config.ts', 'test/int/chaos.int.test.ts'], {
  stdio: 'inherit',
  env: { ...process.env, CHAOS_SEEDS: String(seeds), CHAOS_FIRST_SEED: String(firstSeed) },
});
process.exit(result.status ?? 1);
