import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres, type RunningPostgres } from '../../functions/local/embedded-postgres.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
  }
}

let embedded: RunningPostgres | undefined;

/**
 * One PostgreSQL per test run: the server at DATABASE_URL when it is set, otherwise an embedded
 * PostgreSQL 16 in a fresh temporary folder. Each test file then creates its own database on it
 * (test/support/test-db.ts).
 */
export async function setup(project: TestProject): Promise<void> {
  let url = process.env.DATABASE_URL;
  if (!url) {
    embedded = await startEmbeddedPostgres({ ephemeral: true });
    url = embedded.url;
  }
  project.provide('databaseUrl', url);
}

export async function teardown(): Promise<void> {
  await embedded?.stop();
}
