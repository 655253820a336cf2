/**
 * The project's small error taxonomy. Core code throws these; only the edges (HTTP, SQS, Step
 * Functions handlers) map a category to a status code. `message` is safe to show to a caller for
 * every category except `internal`/`unavailable`, whose details stay in the logs.
 */
export type ErrorCategory =
  | 'validation'
  | 'too_large'
  | 'conflict'
  | 'not_found'
  | 'unavailable'
  | 'internal';

export class AppError extends Error {
  readonly code: string;
  readonly category: ErrorCategory;
  readonly details: unknown;
  /** A caller may retry the whole operation (a fresh transaction) and expect it to succeed. */
  readonly retryable: boolean;

  constructor(
    code: string,
    category: ErrorCategory,
    message: string,
    options: { details?: unknown; cause?: unknown; retryable?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.category = category;
    this.details = options.details;
    this.retryable = options.retryable ?? false;
  }
}

export interface FieldProblem {
  /** JSON-pointer-like path of the offending field, e.g. `events[2].type`. */
  path: string;
  message: string;
}

export class ValidationError extends AppError {
  readonly problems: FieldProblem[];
  constructor(problems: FieldProblem[]) {
    super(
      'VALIDATION_FAILED',
      'validation',
      problems.map((p) => `${p.path}: ${p.message}`).join('; '),
      { details: problems },
    );
    this.problems = problems;
  }
}

export class PayloadTooLargeError extends AppError {
  constructor(what: string, size: number, limit: number) {
    super('PAYLOAD_TOO_LARGE', 'too_large', `${what} is ${size} bytes; the limit is ${limit}`, {
      details: { size, limit },
    });
  }
}

export type ExpectedVersion = number | 'any';

export class WrongExpectedVersionError extends AppError {
  readonly expected: ExpectedVersion;
  readonly actual: number;
  constructor(streamId: string, expected: ExpectedVersion, actual: number) {
    super(
      'WRONG_EXPECTED_VERSION',
      'conflict',
      `stream ${JSON.stringify(streamId)} is at version ${actual}, expected ${expected}`,
      { details: { expected, actual } },
    );
    this.expected = expected;
    this.actual = actual;
  }
}

export class DuplicateEventIdError extends AppError {
  constructor(eventIds: string[], reason: string) {
    super('DUPLICATE_EVENT_ID', 'conflict', reason, { details: { eventIds } });
  }
}

export class StreamNotFoundError extends AppError {
  constructor(streamId: string) {
    super('STREAM_NOT_FOUND', 'not_found', `stream ${JSON.stringify(streamId)} does not exist`);
  }
}

/**
 * A database error, normalised by the driver so that core code can branch on the SQLSTATE
 * (`55P03` lock_not_available, `23505` unique_violation, …) whichever driver produced it.
 */
export class DatabaseError extends AppError {
  readonly sqlState: string | undefined;
  readonly constraint: string | undefined;
  constructor(
    message: string,
    options: { sqlState?: string; constraint?: string; cause?: unknown } = {},
  ) {
    const retryable = isRetryableSqlState(options.sqlState);
    super('DATABASE_UNAVAILABLE', 'unavailable', message, { cause: options.cause, retryable });
    this.sqlState = options.sqlState;
    this.constraint = options.constraint;
  }
}

/**
 * Failures after which running the same transaction again is safe and may succeed: serialization
 * and deadlock aborts, lock and statement timeouts, and lost or refused connections (nothing was
 * committed, or the commit's outcome is covered by idempotent event ids).
 */
export function isRetryableSqlState(sqlState: string | undefined): boolean {
  if (sqlState === undefined) return true; // no SQLSTATE: the connection itself failed
  return (
    sqlState === '40001' || // serialization_failure
    sqlState === '40P01' || // deadlock_detected
    sqlState === '55P03' || // lock_not_available (lock_timeout)
    sqlState === '57014' || // query_canceled (statement_timeout)
    sqlState === '25P03' || // idle_in_transaction_session_timeout
    sqlState.startsWith('08') || // connection exceptions
    sqlState === '57P01' || // admin_shutdown (pg_terminate_backend)
    sqlState === '57P03' // cannot_connect_now
  );
}

export function isSqlState(error: unknown, sqlState: string): error is DatabaseError {
  return error instanceof DatabaseError && error.sqlState === sqlState;
}
