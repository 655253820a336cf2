import type { ProjectionDefinition } from '../core/projections/definition.ts';
import { customerTotals } from './customer-totals.ts';
import { orderSummary } from './order-summary.ts';

/** Every projection of the product. Appends receive all of them; only inline ones act in the append. */
export const PROJECTIONS: readonly ProjectionDefinition[] = [orderSummary, customerTotals];

export function projectionNamed(name: string): ProjectionDefinition | undefined {
  return PROJECTIONS.find((p) => p.name === name);
}
