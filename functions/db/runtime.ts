import { createPostgresDb } from './postgres.ts';
import type { Db } from './types.ts';

/**
 * Runtime configuration of a Lambda or local process, parsed once at module scope: a missing or
 * malformed value fails the container's start, loudly, not a request later.
 */
export interface RuntimeConfig {
  databaseUrl: string;
  poolSize: number;
}

export function loadRuntimeConfig(env: NodeJS.ProcessEnv = process.env): RuntimeConfig {
  const databaseUrl = env.DATABASE_URL;
  if (!databaseUrl) throw new Error('DATABASE_URL is not set');
  try {
    new URL(databaseUrl);
  } catch {
    throw new Error('DATABASE_URL is not a URL');
  }
  const poolSize = env.DB_POOL_SIZE === undefined ? 2 : Number(env.DB_POOL_SIZE);
  if (!Number.isInteger(poolSize) || poolSize < 1 || poolSize > 100) throw new Error('DB_POOL_SIZE must be 1-100');
  return { databaseUrl, poolSize };
}

let shared: Db | undefined;

/** The process's one pool, created on first use and reused by every invocation of the container. */
export function runtimeDb(config: RuntimeConfig = loadRuntimeConfig()): Db {
  shared ??= createPostgresDb({ url: config.databaseUrl, max: config.poolSize, applicationName: 'ledgerline-lambda' });
  return shared;
}
