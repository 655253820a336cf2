import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { describe, expect, it } from 'vitest';
import { LedgerlineStack } from '../../infra/ledgerline-stack.ts';

function template(stage: string): Template {
  const app = new App();
  return Template.fromStack(new LedgerlineStack(app, `ledgerline-${stage}`, { stage }));
}

describe('the CDK stack', () => {
  const dev = template('dev');

  it('runs Aurora Serverless v2 PostgreSQL 16 with the Data API, encrypted, in isolated subnets', () => {
    dev.hasResourceProperties('AWS::RDS::DBCluster', {
      Engine: 'aurora-postgresql',
      EngineVersion: Match.stringLikeRegexp('^16\\.'),
      EnableHttpEndpoint: true,
      StorageEncrypted: true,
      ServerlessV2ScalingConfiguration: { MinCapacity: 0.5, MaxCapacity: 16 },
      DatabaseName: 'ledgerline',
    });
    dev.hasResourceProperties('AWS::RDS::DBInstance', { DBInstanceClass: 'db.serverless', PubliclyAccessible: false });
    dev.resourceCountIs('AWS::EC2::NatGateway', 0);
    dev.resourceCountIs('AWS::EC2::InternetGateway', 0);
  });

  it('keeps the master credentials in a generated Secrets Manager secret, never in the template', () => {
    dev.hasResourceProperties('AWS::SecretsManager::Secret', {
      GenerateSecretString: Match.objectLike({ GenerateStringKey: 'password' }),
    });
    const cluster = Object.values(dev.findResources('AWS::RDS::DBCluster'))[0] as { Properties: Record<string, unknown> };
    expect(JSON.stringify(cluster.Properties.MasterUserPassword)).toContain('resolve:secretsmanager');
  });

  it('retains and protects the production database, and not a dev one', () => {
    const prod = template('prod');
    prod.hasResource('AWS::RDS::DBCluster', { DeletionPolicy: 'Retain', Properties: Match.objectLike({ DeletionProtection: true }) });
    dev.hasResource('AWS::RDS::DBCluster', { DeletionPolicy: 'Delete', Properties: Match.objectLike({ DeletionProtection: false }) });
  });
});
