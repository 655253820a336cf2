import { AppError } from './errors.ts';

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * The one place identifiers enter SQL text. Only lower-case snake_case names of at most 63
 * characters pass, quoted; values are always bound parameters, never identifiers.
 */
export function ident(name: string): string {
  if (!IDENTIFIER.test(name)) {
    throw new AppError('INVALID_IDENTIFIER', 'internal', `not a safe SQL identifier: ${JSON.stringify(name)}`);
  }
  return `"${name}"`;
}
