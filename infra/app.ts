import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { LedgerlineStack } from './ledgerline-stack.ts';

/**
 * `npx cdk synth` / `npx cdk deploy [-c stage=prod]`. Env-agnostic: the account and region come
 * from the deploying credentials, and synthesis needs none.
 */
const app = new App();
// cdk-nag: synthesis fails on any AwsSolutions finding not acknowledged with a reason (ledgerline-stack.ts).
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
const stage = String(app.node.tryGetContext('stage') ?? 'dev');
if (!/^[a-z][a-z0-9-]{0,15}$/.test(stage)) throw new Error(`stage must be a short lower-case name, got ${stage}`);
new LedgerlineStack(app, `ledgerline-${stage}`, { stage });
