import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { describe, expect, it } from 'vitest';
import { LedgerlineStack } from '../../infra/ledgerline-stack.ts';

describe('cdk-nag AwsSolutions', () => {
  it.each([
    ['dev', 'data-api'],
    ['prod', 'data-api'],
    ['dev', 'rds-proxy'],
  ] as const)('finds nothing unacknowledged in the %s stack over %s', (stage, dbDriver) => {
    const outdir = mkdtempSync(join(tmpdir(), 'nag-'));
    const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    new LedgerlineStack(app, `ledgerline-${stage}`, { stage, dbDriver });
    let error: unknown;
    try {
      app.synth();
    } catch (e) {
      error = e;
    }
    const report = JSON.parse(readFileSync(join(outdir, 'validation-report.json'), 'utf8')) as {
      pluginReports: Array<{ violations: Array<{ ruleName: string; violatingConstructs: Array<{ constructPath: string }> }> }>;
    };
    const violations = report.pluginReports.flatMap((r) => r.violations.map((v) => `${v.ruleName}: ${v.violatingConstructs.map((c) => c.constructPath).join(', ')}`));
    expect(violations).toEqual([]);
    expect(error).toBeUndefined();
  });
});
