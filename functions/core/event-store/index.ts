export { appendToStream, APPEND_TIMEOUTS } from './append.ts';
export { readAll, readStream, MAX_READ_LIMIT } from './read.ts';
export { LIMITS } from './limits.ts';
export type * from './types.ts';
