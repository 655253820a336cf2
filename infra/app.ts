import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { LedgerlineStack } from './ledgerline-stack.ts';

/**
 * `npx cdk synth` / `npx cdk deploy [-c stage=prod] [-c dbDriver=rds-proxy]`. Env-agnostic: the account and region come
 * from the deploying credentials, and synthesis needs none.
 */
const app = new App();
// cdk-nag: synthesis fails on any AwsSolutions finding not acknowledged with a reason (ledgerline-stack.ts).
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
const stage = String(app.node.tryGetContext('stage') ?? 'dev');
if (!/^[a-z][a-z0-9-]{0,15}$/.test(stage)) throw new Error(`stage must be a short lower-case name, got ${stage}`);
const dbDriver = String(app.node.tryGetContext('dbDriver') ?? 'data-api');
if (dbDriver !== 'data-api' && dbDriver !== 'rds-proxy') throw new Error(`dbDriver must be data-api or rds-proxy, got ${dbDriver}`);
new LedgerlineStack(app, `ledgerline-${stage}`, { stage, dbDriver });
