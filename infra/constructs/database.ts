import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as rds from 'aws-cdk-lib/aws-rds';
import { Construct } from 'constructs';

export interface DatabaseProps {
  vpc: ec2.IVpc;
  /** Production stages keep the cluster on deletion and refuse accidental deletes. */
  retain: boolean;
  maxCapacityAcu?: number;
}

/**
 * Aurora Serverless v2, PostgreSQL 16, with the RDS Data API enabled (Lambdas reach it over HTTPS
 * without connections or a VPC) and its master secret generated into Secrets Manager. Isolated
 * subnets: nothing outside the VPC reaches the cluster directly.
 */
export class Database extends Construct {
  readonly cluster: rds.DatabaseCluster;
  readonly databaseName = 'ledgerline';

  constructor(scope: Construct, id: string, props: DatabaseProps) {
    super(scope, id);
    this.cluster = new rds.DatabaseCluster(this, 'Cluster', {
      engine: rds.DatabaseClusterEngine.auroraPostgres({ version: rds.AuroraPostgresEngineVersion.VER_16_9 }),
      writer: rds.ClusterInstance.serverlessV2('Writer'),
      serverlessV2MinCapacity: 0.5,
      serverlessV2MaxCapacity: props.maxCapacityAcu ?? 16,
      enableDataApi: true,
      credentials: rds.Credentials.fromGeneratedSecret('ledgerline_admin'),
      defaultDatabaseName: this.databaseName,
      vpc: props.vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      storageEncrypted: true,
      iamAuthentication: true,
      backup: { retention: Duration.days(props.retain ? 14 : 1) },
      deletionProtection: props.retain,
      removalPolicy: props.retain ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY,
      cloudwatchLogsExports: ['postgresql'],
    });
  }
}
