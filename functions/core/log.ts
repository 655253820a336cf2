/**
 * The logging the core and the handlers need: structured, one object per line. Lambdas pass a
 * Powertools Logger (which has this shape); tests pass a recorder.
 */
export interface Log {
  info(message: string, extra?: Record<string, unknown>): void;
  warn(message: string, extra?: Record<string, unknown>): void;
  error(message: string, extra?: Record<string, unknown>): void;
}
