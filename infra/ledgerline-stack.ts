import { Stack, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import type { Construct } from 'constructs';
import { Database } from './constructs/database.ts';

export interface LedgerlineStackProps extends StackProps {
  /** dev, staging, prod, …: part of every resource name; `prod` retains data on delete. */
  stage: string;
}

/**
 * The deployed product. So far: the network and the Aurora database. The Lambdas, API Gateway, the
 * rebuild state machine, queues and alarms are added by the infrastructure issue.
 */
export class LedgerlineStack extends Stack {
  readonly database: Database;

  constructor(scope: Construct, id: string, props: LedgerlineStackProps) {
    super(scope, id, props);
    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'isolated', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 }],
    });
    this.database = new Database(this, 'Database', { vpc, retain: props.stage === 'prod' });
  }
}
