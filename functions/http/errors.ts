import { AppError, ValidationError, type ErrorCategory } from '../core/errors.ts';
import type { Log } from '../core/log.ts';

const STATUS: Record<ErrorCategory, number> = {
  validation: 400,
  too_large: 413,
  conflict: 409,
  not_found: 404,
  unavailable: 503,
  internal: 500,
};

export class RouteNotFoundError extends AppError {
  constructor() {
    super('ROUTE_NOT_FOUND', 'not_found', 'no such route');
  }
}

export class MethodNotAllowedError extends AppError {
  readonly allow: string[];
  constructor(allow: string[]) {
    super('METHOD_NOT_ALLOWED', 'validation', `allowed: ${allow.join(', ')}`);
    this.allow = allow;
  }
}

/**
 * The one error mapping of the API: the category gives the status, the body is
 * `{ error: { code, message, details? } }`; a 5xx says nothing about internals (they are logged).
 */
export function errorResponse(error: unknown, log: Log, correlationId: string): { statusCode: number; body: unknown; headers?: Record<string, string> } {
  if (error instanceof AppError && error.category !== 'internal' && error.category !== 'unavailable') {
    const statusCode = error instanceof MethodNotAllowedError ? 405 : STATUS[error.category];
    const details = error instanceof ValidationError ? error.problems : error.details;
    return {
      statusCode,
      body: { error: { code: error.code, message: error.message, ...(details === undefined ? {} : { details }) } },
      ...(error instanceof MethodNotAllowedError ? { headers: { allow: error.allow.join(', ') } } : {}),
    };
  }
  const unavailable = error instanceof AppError && error.category === 'unavailable';
  log.error('request failed', { correlationId, error: error instanceof Error ? `${error.name}: ${error.message}` : String(error) });
  return {
    statusCode: unavailable ? 503 : 500,
    body: {
      error: unavailable
        ? { code: 'SERVICE_UNAVAILABLE', message: 'the service is temporarily unavailable; retry later' }
        : { code: 'INTERNAL', message: 'an internal error occurred', details: { correlationId } },
    },
  };
}
