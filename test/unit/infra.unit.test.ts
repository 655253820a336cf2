import { App, Aspects } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deployInputsHash, INGEST_MAX_RECEIVE_COUNT, LedgerlineStack } from '../../infra/ledgerline-stack.ts';

/** Synthesis without bundling (the template is what is tested; `npx cdk synth` bundles for real). */
function template(stage: string, dbDriver?: 'data-api' | 'rds-proxy'): Template {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  return Template.fromStack(new LedgerlineStack(app, `ledgerline-${stage}`, { stage, ...(dbDriver ? { dbDriver } : {}) }));
}

const dev = template('dev');

describe('the CDK stack', () => {
  it('runs Aurora Serverless v2 PostgreSQL 16 with the Data API, encrypted, in isolated subnets', () => {
    dev.hasResourceProperties('AWS::RDS::DBCluster', {
      Engine: 'aurora-postgresql',
      EngineVersion: Match.stringLikeRegexp('^16\\.'),
      EnableHttpEndpoint: true,
      StorageEncrypted: true,
      ServerlessV2ScalingConfiguration: { MinCapacity: 0.5, MaxCapacity: 16 },
    });
    dev.hasResourceProperties('AWS::RDS::DBInstance', { DBInstanceClass: 'db.serverless', PubliclyAccessible: false });
    dev.resourceCountIs('AWS::EC2::NatGateway', 0);
    dev.resourceCountIs('AWS::EC2::InternetGateway', 0);
  });

  it('keeps the master credentials in a generated secret, never in the template', () => {
    dev.hasResourceProperties('AWS::SecretsManager::Secret', { GenerateSecretString: Match.objectLike({ GenerateStringKey: 'password' }) });
    const cluster = Object.values(dev.findResources('AWS::RDS::DBCluster'))[0] as { Properties: Record<string, unknown> };
    expect(JSON.stringify(cluster.Properties.MasterUserPassword)).toContain('resolve:secretsmanager');
    expect(JSON.stringify(dev.toJSON())).not.toMatch(/"password"\s*:\s*"[^{]/i);
  });

  it('re-runs the migration resource whenever the migrations or the projection definitions change', () => {
    // CloudFormation calls a custom resource again only when a property changes.
    const resources = Object.values(dev.findResources('AWS::CloudFormation::CustomResource')) as Array<{ Properties: Record<string, unknown> }>;
    const migrations = resources.find((r) => 'version' in r.Properties);
    // A hash of its inputs, not a constant: with the constant it once was, a deploy that added a
    // migration never applied it.
    expect(migrations?.Properties.version).toBe(deployInputsHash());
    // The hash moves with each kind of input: an edited or added migration, a changed projection.
    const root = mkdtempSync(join(tmpdir(), 'ledgerline-inputs-'));
    try {
      for (const dir of ['migrations', 'functions/domain', 'functions/core/projections']) mkdirSync(join(root, dir), { recursive: true });
      writeFileSync(join(root, 'migrations/001_a.sql'), 'create table a ();');
      writeFileSync(join(root, 'functions/domain/p.ts'), 'export const p = 1;');
      const seen = new Set([deployInputsHash(root)]);
      writeFileSync(join(root, 'migrations/001_a.sql'), 'create table a (x int);');
      seen.add(deployInputsHash(root));
      writeFileSync(join(root, 'migrations/002_b.sql'), 'create table b ();');
      seen.add(deployInputsHash(root));
      writeFileSync(join(root, 'functions/domain/p.ts'), 'export const p = 2;');
      seen.add(deployInputsHash(root));
      writeFileSync(join(root, 'functions/core/projections/q.ts'), 'export const q = 1;');
      seen.add(deployInputsHash(root));
      expect(seen.size).toBe(5);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('retains and protects the production database, and not a dev one', () => {
    const prod = template('prod');
    prod.hasResource('AWS::RDS::DBCluster', { DeletionPolicy: 'Retain', Properties: Match.objectLike({ DeletionProtection: true }) });
    dev.hasResource('AWS::RDS::DBCluster', { DeletionPolicy: 'Delete', Properties: Match.objectLike({ DeletionProtection: false }) });
  });

  const ourFunctions = (t: Template) =>
    (Object.values(t.findResources('AWS::Lambda::Function')) as Array<{ Properties: Record<string, any> }>).filter(
      (f) => f.Properties.Environment?.Variables?.NODE_OPTIONS === '--enable-source-maps',
    );

  it('wires the Data API by default: functions on Node.js 22, arm64, outside the VPC, with rds-data on the cluster only', () => {
    const ours = ourFunctions(dev);
    expect(ours.length).toBe(6); // api, rebuild steps, projector, ingest, redrive, migrations
    const withDb = ours.filter((f) => f.Properties.Environment.Variables.DB_DRIVER);
    expect(withDb).toHaveLength(5); // not the redrive
    for (const f of withDb) {
      expect(f.Properties.Environment.Variables).toMatchObject({ DB_DRIVER: 'data-api', DB_CLUSTER_ARN: expect.anything(), DB_SECRET_ARN: expect.anything(), DB_NAME: 'ledgerline' });
      expect(f.Properties.Environment.Variables.DB_HOST).toBeUndefined();
    }
    for (const f of ours) {
      expect(f.Properties).toMatchObject({ Runtime: 'nodejs22.x', Architectures: ['arm64'] });
      expect(f.Properties.VpcConfig).toBeUndefined();
    }
    dev.hasResourceProperties('AWS::RDS::DBCluster', { EnableHttpEndpoint: true });
    dev.resourceCountIs('AWS::RDS::DBProxy', 0);
    dev.resourceCountIs('AWS::EC2::VPCEndpoint', 0);
    const policies = JSON.stringify(Object.values(dev.findResources('AWS::IAM::Policy')).map((p) => (p as { Properties: { PolicyDocument: unknown } }).Properties.PolicyDocument));
    expect(policies).toContain('rds-data:ExecuteStatement');
    expect(policies).toContain('rds-data:BeginTransaction');
  });

  it('can wire postgres.js through RDS Proxy instead: functions in the VPC, TLS required, no Data API grants', () => {
    const proxied = template('dev', 'rds-proxy');
    const withDb = ourFunctions(proxied).filter((f) => f.Properties.Environment.Variables.DB_DRIVER);
    expect(withDb).toHaveLength(5);
    for (const f of withDb) {
      expect(f.Properties.Environment.Variables).toMatchObject({ DB_DRIVER: 'postgres', DB_HOST: expect.anything(), DB_SECRET_ARN: expect.anything() });
      expect(f.Properties.VpcConfig).toBeDefined();
    }
    proxied.hasResourceProperties('AWS::RDS::DBProxy', { RequireTLS: true, EngineFamily: 'POSTGRESQL' });
    proxied.resourceCountIs('AWS::EC2::VPCEndpoint', 4);
    const policies = JSON.stringify(Object.values(proxied.findResources('AWS::IAM::Policy')).map((p) => (p as { Properties: { PolicyDocument: unknown } }).Properties.PolicyDocument));
    expect(policies).not.toContain('rds-data:');
  });

  it('gives every queue a DLQ with an explicit receive count and retention, and consumes with per-record failures', () => {
    dev.hasResourceProperties('AWS::SQS::Queue', {
      RedrivePolicy: { deadLetterTargetArn: Match.anyValue(), maxReceiveCount: INGEST_MAX_RECEIVE_COUNT },
      VisibilityTimeout: 360,
    });
    const queues = Object.values(dev.findResources('AWS::SQS::Queue')) as Array<{ Properties: Record<string, any> }>;
    expect(queues.filter((q) => q.Properties.MessageRetentionPeriod === 1_209_600)).toHaveLength(2);
    dev.hasResourceProperties('AWS::Lambda::EventSourceMapping', { FunctionResponseTypes: ['ReportBatchItemFailures'], BatchSize: 10 });
  });

  it('alarms on every dead-letter queue, old skip rows, async lag and failed rebuilds', () => {
    const alarms = Object.values(dev.findResources('AWS::CloudWatch::Alarm')) as Array<{ Properties: Record<string, any> }>;
    const dlqAlarms = alarms.filter((a) => a.Properties.MetricName === 'ApproximateNumberOfMessagesVisible');
    expect(dlqAlarms).toHaveLength(2);
    for (const a of dlqAlarms) expect(a.Properties).toMatchObject({ Threshold: 0, ComparisonOperator: 'GreaterThanThreshold' });
    expect(alarms.map((a) => a.Properties.MetricName).sort()).toEqual(
      ['ApproximateNumberOfMessagesVisible', 'ApproximateNumberOfMessagesVisible', 'AsyncLag', 'ExecutionsFailed', 'OldestSkipAgeSeconds'].sort(),
    );
    dev.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
  });

  it('requires IAM (SigV4) on every API route, and keeps rebuilds behind the admin policy', () => {
    const methods = Object.values(dev.findResources('AWS::ApiGateway::Method')) as Array<{ Properties: Record<string, any> }>;
    expect(methods.length).toBeGreaterThan(0);
    for (const m of methods) if (m.Properties.HttpMethod !== 'OPTIONS') expect(m.Properties.AuthorizationType).toBe('AWS_IAM');
    const policies = Object.values(dev.findResources('AWS::IAM::ManagedPolicy')) as Array<{ Properties: Record<string, any> }>;
    const text = (p: { Properties: Record<string, any> }) => JSON.stringify(p.Properties.PolicyDocument);
    const client = policies.find((p) => p.Properties.Description?.startsWith('Append'))!;
    const admin = policies.find((p) => p.Properties.Description?.startsWith('Start rebuilds'))!;
    expect(text(client)).not.toContain('/projections');
    expect(text(client)).not.toContain('lambda:InvokeFunction');
    expect(text(admin)).toContain('/POST/projections/*');
  });

  it('grants each function only what it uses', () => {
    const roles = dev.toJSON().Resources as Record<string, { Type: string; Properties: Record<string, any> }>;
    const policyOf = (prefix: string) =>
      JSON.stringify(Object.entries(roles).filter(([id, r]) => r.Type === 'AWS::IAM::Policy' && id.startsWith(prefix)).map(([, r]) => r.Properties.PolicyDocument));
    expect(policyOf('ApiHandlerServiceRoleDefaultPolicy')).toContain('states:StartExecution');
    expect(policyOf('ApiHandlerServiceRoleDefaultPolicy')).not.toContain('sqs:');
    expect(policyOf('IngestServiceRoleDefaultPolicy')).not.toContain('states:');
    expect(policyOf('RedriveServiceRoleDefaultPolicy')).toContain('sqs:SendMessage');
    expect(policyOf('ProjectorServiceRoleDefaultPolicy')).not.toContain('sqs:SendMessage');
    const all = Object.values(roles).filter((r) => r.Type === 'AWS::IAM::Policy').map((r) => JSON.stringify(r.Properties.PolicyDocument));
    for (const p of all) expect(p).not.toMatch(/"Action":"\*"/);
  });

  it('defines the rebuild state machine on JSONPath with retries, a catch to the failures queue, and its own log group', () => {
    const [machine] = Object.values(dev.findResources('AWS::StepFunctions::StateMachine')) as Array<{ Properties: Record<string, any> }>;
    expect(machine!.Properties.StateMachineType).toBe('STANDARD');
    expect(machine!.Properties.LoggingConfiguration.Level).toBe('ALL');
    const asl = JSON.stringify(machine!.Properties.DefinitionString);
    expect(asl).not.toContain('JSONata');
    expect(asl).toContain('TransientError');
    expect(asl).toContain('states:::sqs:sendMessage');
  });
});
