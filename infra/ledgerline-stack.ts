import { CfnElement, CfnOutput, CustomResource, Duration, Stack, Validations, type StackProps } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as eventSources from 'aws-cdk-lib/aws-lambda-event-sources';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as cr from 'aws-cdk-lib/custom-resources';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Database } from './constructs/database.ts';
import { nodeFunction, ROOT } from './constructs/functions.ts';
import { RebuildWorkflow } from './constructs/rebuild-workflow.ts';

export interface LedgerlineStackProps extends StackProps {
  /** dev, staging, prod, …: part of every resource name; `prod` retains data on delete. */
  stage: string;
  /** Alarm thresholds. */
  skipAgeAlarmSeconds?: number;
  asyncLagAlarm?: number;
  /** Rebuild loop turns per execution before it continues as a new one (default 200). */
  rebuildMaxIterations?: number;
  /**
   * How the Lambdas reach Aurora (default `data-api`):
   * - `data-api`: the RDS Data API over HTTPS. The Lambdas run outside the VPC and hold no
   *   connections, so a burst of 500 concurrent Lambdas cannot exhaust the database's connections,
   *   and the password never enters a Lambda. Each statement is an HTTPS call (README: calls per append).
   * - `rds-proxy`: postgres.js through RDS Proxy, from inside the VPC (interface endpoints, no NAT).
   *   Fewer, cheaper round trips per append; the proxy pools connections across Lambdas.
   */
  dbDriver?: 'data-api' | 'rds-proxy';
}

export const INGEST_MAX_RECEIVE_COUNT = 5;

/**
 * The deployed product: Aurora (Data API on), the Lambdas (API, rebuild steps, async projector,
 * SQS consumer, DLQ redrive, migrations), API Gateway with IAM on every route, the rebuild state
 * machine, the queues and their DLQs, alarms and a dashboard. Permissions are CDK grants.
 */
export class LedgerlineStack extends Stack {
  readonly database: Database;
  readonly workflow: RebuildWorkflow;
  readonly api: apigw.RestApi;
  readonly ingestQueue: sqs.Queue;
  readonly ingestDlq: sqs.Queue;
  readonly failuresQueue: sqs.Queue;
  readonly adminPolicy: iam.ManagedPolicy;
  readonly clientPolicy: iam.ManagedPolicy;

  constructor(scope: Construct, id: string, props: LedgerlineStackProps) {
    super(scope, id, props);
    const driver = props.dbDriver ?? 'data-api';
    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'isolated', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 }],
      flowLogs: { all: { trafficType: ec2.FlowLogTrafficType.REJECT } },
    });
    this.database = new Database(this, 'Database', { vpc, retain: props.stage === 'prod' });
    const cluster = this.database.cluster;
    let dbEnv: Record<string, string>;
    let network: { vpc: ec2.IVpc; securityGroup: ec2.ISecurityGroup } | undefined;
    let grantDb: (f: lambda.IFunction) => void;
    if (driver === 'data-api') {
      dbEnv = { DB_DRIVER: 'data-api', DB_CLUSTER_ARN: cluster.clusterArn, DB_SECRET_ARN: cluster.secret!.secretArn, DB_NAME: this.database.databaseName };
      // rds-data statements on this cluster, and read access to its secret (which the Data API uses on the caller's behalf).
      grantDb = (f) => cluster.grantDataApiAccess(f);
    } else {
      // No NAT: the Lambdas in the VPC reach AWS APIs through interface endpoints only.
      for (const [name, service] of [
        ['SecretsManager', ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER],
        ['StepFunctions', ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS],
        ['Sqs', ec2.InterfaceVpcEndpointAwsService.SQS],
        ['Lambda', ec2.InterfaceVpcEndpointAwsService.LAMBDA],
      ] as const) {
        vpc.addInterfaceEndpoint(name, { service, privateDnsEnabled: true });
      }
      const lambdaSg = new ec2.SecurityGroup(this, 'LambdaSg', { vpc, description: 'ledgerline Lambdas', allowAllOutbound: true });
      const proxy = cluster.addProxy('Proxy', {
        secrets: [cluster.secret!],
        vpc,
        vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
        requireTLS: true,
        // Appends hold a connection for one short transaction; let the proxy share it across Lambdas.
        maxConnectionsPercent: 90,
        borrowTimeout: Duration.seconds(10),
      });
      proxy.connections.allowFrom(lambdaSg, ec2.Port.tcp(5432), 'Lambdas to RDS Proxy');
      cluster.connections.allowDefaultPortFrom(proxy, 'RDS Proxy to Aurora');
      network = { vpc, securityGroup: lambdaSg };
      dbEnv = { DB_DRIVER: 'postgres', DB_SECRET_ARN: cluster.secret!.secretArn, DB_HOST: proxy.endpoint, DB_PORT: '5432', DB_NAME: this.database.databaseName };
      grantDb = (f) => cluster.secret!.grantRead(f);
    }
    const fn = (id: string, entry: string, extra: Partial<Parameters<typeof nodeFunction>[2]> & { database?: boolean } = {}) => {
      const usesDb = extra.database ?? true;
      const f = nodeFunction(this, id, {
        ...extra,
        entry,
        ...(network ? { network } : {}),
        environment: { ...(usesDb ? dbEnv : {}), ...(extra.environment ?? {}) },
      });
      if (usesDb) grantDb(f);
      return f;
    };

    // Queues: every queue has a DLQ with an explicit receive count and 14 days' retention.
    const retention = Duration.days(14);
    this.ingestDlq = new sqs.Queue(this, 'IngestDlq', { retentionPeriod: retention, enforceSSL: true, encryption: sqs.QueueEncryption.SQS_MANAGED });
    this.ingestQueue = new sqs.Queue(this, 'IngestQueue', {
      retentionPeriod: Duration.days(4),
      visibilityTimeout: Duration.seconds(6 * 60),
      deadLetterQueue: { queue: this.ingestDlq, maxReceiveCount: INGEST_MAX_RECEIVE_COUNT },
      enforceSSL: true,
      encryption: sqs.QueueEncryption.SQS_MANAGED,
    });
    // Failed rebuild executions and failed async projector runs are parked here for the operator.
    this.failuresQueue = new sqs.Queue(this, 'FailuresDlq', { retentionPeriod: retention, enforceSSL: true, encryption: sqs.QueueEncryption.SQS_MANAGED });
    Validations.of(this.failuresQueue).acknowledge({
      id: 'AwsSolutions-SQS3',
      reason: 'This queue is itself the dead-letter queue of the rebuild workflow and the projector schedule.',
    });

    // Migrations before anything serves traffic.
    const migrateFn = fn('Migrate', 'functions/db/migrate-lambda.ts', {
      timeout: Duration.minutes(10),
      copyMigrations: true,
      environment: { MIGRATIONS_DIR: '/var/task/migrations' },
    });
    const migrations = new CustomResource(this, 'Migrations', {
      serviceToken: new cr.Provider(this, 'MigrationsProvider', {
        onEventHandler: migrateFn,
        logGroup: new logs.LogGroup(this, 'MigrationsProviderLogs', { retention: logs.RetentionDays.ONE_MONTH }),
      }).serviceToken,
      // CloudFormation calls the resource again only when a property changes: the hash of the SQL
      // and of the projection definitions, so a deploy with a new migration applies it and a
      // deploy with a changed projection re-creates its objects (ensureProjection). A constant here
      // left new migration files unapplied.
      properties: { version: deployInputsHash() },
    });
    migrations.node.addDependency(cluster);

    const steps = fn('RebuildSteps', 'functions/workflow/rebuild-steps-lambda.ts', { timeout: Duration.minutes(15), memorySize: 1024 });
    this.workflow = new RebuildWorkflow(this, 'RebuildWorkflow', {
      stepFunction: steps,
      failures: this.failuresQueue,
      stage: props.stage,
      ...(props.rebuildMaxIterations === undefined ? {} : { maxIterations: props.rebuildMaxIterations }),
    });

    const projector = fn('Projector', 'functions/workflow/projector-lambda.ts', { timeout: Duration.seconds(60), reservedConcurrentExecutions: 1 });
    new events.Rule(this, 'ProjectorSchedule', {
      schedule: events.Schedule.rate(Duration.minutes(1)),
      targets: [new targets.LambdaFunction(projector, { deadLetterQueue: this.failuresQueue, retryAttempts: 2 })],
    });

    const ingest = fn('Ingest', 'functions/queue/ingest-lambda.ts', { timeout: Duration.seconds(60) });
    ingest.addEventSource(new eventSources.SqsEventSource(this.ingestQueue, { batchSize: 10, reportBatchItemFailures: true, maxConcurrency: 10 }));

    const redriveFn = fn('Redrive', 'functions/queue/redrive-lambda.ts', {
      database: false,
      timeout: Duration.minutes(5),
      environment: { REDRIVE_PAIRS: Stack.of(this).toJsonString({ [this.ingestDlq.queueUrl]: this.ingestQueue.queueUrl }) },
    });
    this.ingestDlq.grantConsumeMessages(redriveFn);
    this.ingestQueue.grantSendMessages(redriveFn);

    const apiFn = fn('ApiHandler', 'functions/http/api-lambda.ts', {
      environment: { REBUILD_STATE_MACHINE_ARN: this.workflow.stateMachine.stateMachineArn, PROJECTOR_FUNCTION_NAME: projector.functionName },
    });
    this.workflow.stateMachine.grantStartExecution(apiFn);
    projector.grantInvoke(apiFn);
    apiFn.node.addDependency(migrations);

    const accessLogs = new logs.LogGroup(this, 'ApiAccessLogs', { retention: logs.RetentionDays.ONE_MONTH });
    this.api = new apigw.RestApi(this, 'Api', {
      restApiName: `ledgerline-${props.stage}`,
      defaultMethodOptions: { authorizationType: apigw.AuthorizationType.IAM },
      deployOptions: {
        stageName: props.stage,
        accessLogDestination: new apigw.LogGroupLogDestination(accessLogs),
        accessLogFormat: apigw.AccessLogFormat.jsonWithStandardFields(),
        tracingEnabled: true,
        loggingLevel: apigw.MethodLoggingLevel.ERROR,
        throttlingBurstLimit: 500,
        throttlingRateLimit: 1000,
      },
      cloudWatchRole: true,
      endpointTypes: [apigw.EndpointType.REGIONAL],
    });
    this.api.node.addDependency(migrations);
    const integration = new apigw.LambdaIntegration(apiFn);
    this.api.root.addProxy({ defaultIntegration: integration, anyMethod: true });

    // Who may call what: clients append and read; only admins start rebuilds.
    const route = (method: string, path: string) => this.api.arnForExecuteApi(method, path, props.stage);
    this.clientPolicy = new iam.ManagedPolicy(this, 'ClientPolicy', {
      description: 'Append events, post observations, read streams and read models',
      statements: [
        new iam.PolicyStatement({
          actions: ['execute-api:Invoke'],
          resources: [route('GET', '/*'), route('POST', '/streams/*'), route('POST', '/orders/*')],
        }),
      ],
    });
    this.adminPolicy = new iam.ManagedPolicy(this, 'AdminPolicy', {
      description: 'Start rebuilds and redrive dead letters',
      statements: [
        new iam.PolicyStatement({ actions: ['execute-api:Invoke'], resources: [route('POST', '/projections/*'), route('DELETE', '/projections/*')] }),
        new iam.PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: [redriveFn.functionArn] }),
        new iam.PolicyStatement({ actions: ['states:StartExecution', 'states:DescribeExecution', 'states:StopExecution'], resources: [this.workflow.stateMachine.stateMachineArn] }),
      ],
    });

    // Alarms: any message in any DLQ, skip rows pending too long, async lag, failed rebuilds.
    const alarms: cloudwatch.Alarm[] = [];
    for (const [name, queue] of [['IngestDlq', this.ingestDlq], ['FailuresDlq', this.failuresQueue]] as const) {
      alarms.push(
        queue.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(1), statistic: 'Maximum' }).createAlarm(this, `${name}NotEmpty`, {
          alarmDescription: `${name} has messages: see RUNBOOK "${name}NotEmpty"`,
          threshold: 0,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
          evaluationPeriods: 1,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        }),
      );
    }
    const projectionMetric = (metricName: string, projection: string) =>
      new cloudwatch.Metric({ namespace: 'Ledgerline', metricName, dimensionsMap: { Projection: projection, service: 'projector' }, period: Duration.minutes(1), statistic: 'Maximum' });
    alarms.push(
      projectionMetric('OldestSkipAgeSeconds', 'order_summary').createAlarm(this, 'SkipsPendingTooLong', {
        alarmDescription: 'order_summary has skip rows older than the threshold: a rebuild stopped draining',
        threshold: props.skipAgeAlarmSeconds ?? 1800,
        evaluationPeriods: 5,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }),
      projectionMetric('AsyncLag', 'customer_totals').createAlarm(this, 'AsyncLagHigh', {
        alarmDescription: 'customer_totals is behind the log by more than the threshold',
        threshold: props.asyncLagAlarm ?? 10_000,
        evaluationPeriods: 5,
        treatMissingData: cloudwatch.TreatMissingData.BREACHING,
      }),
      this.workflow.stateMachine.metricFailed({ period: Duration.minutes(5), statistic: 'Sum' }).createAlarm(this, 'RebuildFailed', {
        alarmDescription: 'a rebuild execution failed: see the failures DLQ',
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }),
    );
    // What the operator CLI reads to find the stack's parts (`ledgerline --target aws --stack <name>`).
    for (const [id, value] of [
      ['ApiUrl', this.api.url],
      ['IngestQueueUrl', this.ingestQueue.queueUrl],
      ['IngestDlqUrl', this.ingestDlq.queueUrl],
      ['FailuresDlqUrl', this.failuresQueue.queueUrl],
      ['RebuildStateMachineArn', this.workflow.stateMachine.stateMachineArn],
      ['RedriveFunctionName', redriveFn.functionName],
    ] as const) {
      new CfnOutput(this, id, { value });
    }

    acknowledgeNagFindings(this, props.stage, {
      invokedFunctions: [migrateFn, steps, projector],
      driver,
      routes: [['GET', '/*'], ['POST', '/streams/*'], ['POST', '/orders/*'], ['POST', '/projections/*'], ['DELETE', '/projections/*']],
      api: this.api,
    });

    new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: `ledgerline-${props.stage}`,
      widgets: [
        [new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms, width: 24 })],
        [
          new cloudwatch.GraphWidget({ title: 'Dead letters', left: [this.ingestDlq.metricApproximateNumberOfMessagesVisible(), this.failuresQueue.metricApproximateNumberOfMessagesVisible()] }),
          new cloudwatch.GraphWidget({ title: 'Skip rows pending (order_summary)', left: [projectionMetric('SkipsPending', 'order_summary')], right: [projectionMetric('OldestSkipAgeSeconds', 'order_summary')] }),
          new cloudwatch.GraphWidget({ title: 'Async lag (customer_totals)', left: [projectionMetric('AsyncLag', 'customer_totals')], right: [projectionMetric('OpenGaps', 'customer_totals')] }),
          new cloudwatch.GraphWidget({ title: 'Rebuild executions', left: [this.workflow.stateMachine.metricSucceeded(), this.workflow.stateMachine.metricFailed()] }),
        ],
      ],
    });
  }
}

/**
 * cdk-nag (AwsSolutions) findings this stack accepts, each with its reason. Everything else fails
 * synthesis (test/unit/nag.unit.test.ts).
 */
function acknowledgeNagFindings(
  stack: Stack,
  stage: string,
  scoped: { invokedFunctions: lambda.IFunction[]; routes: Array<[string, string]>; api: apigw.RestApi; driver: 'data-api' | 'rds-proxy' },
): void {
  const ack = (id: string, reason: string) => Validations.of(stack).acknowledge({ id, reason });
  const logicalId = (c: { node: { defaultChild?: unknown } }) => stack.getLogicalId(c.node.defaultChild as CfnElement);
  if (scoped.driver === 'rds-proxy') {
    ack('AwsSolutions-EC23', 'The interface endpoints admit HTTPS from the VPC CIDR only; the rule cannot read the CIDR token.');
  }
  ack(
    'AwsSolutions-SMG4',
    'Rotation needs a rotation Lambda that reaches Secrets Manager and the cluster from the isolated subnets (an endpoint or NAT this stack does not pay for by default). The Data API driver reads the secret per call, so enabling it later needs no code change.',
  );
  if (stage !== 'prod') ack('AwsSolutions-RDS10', 'Deletion protection is on for prod only; other stages are disposable.');
  const managed = ['AWSLambdaBasicExecutionRole', 'AmazonAPIGatewayPushToCloudWatchLogs', ...(scoped.driver === 'rds-proxy' ? ['AWSLambdaVPCAccessExecutionRole'] : [])];
  for (const policy of managed) {
    ack(
      `AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/${policy}]`,
      'The minimal AWS-managed policies for Lambda logs and VPC network interfaces, and API Gateway access logging.',
    );
  }
  ack('AwsSolutions-IAM5[Resource::*]', 'Only X-Ray and VPC network-interface actions, which accept no resource but *.');
  for (const fn of scoped.invokedFunctions) {
    ack(`AwsSolutions-IAM5[Resource::<${logicalId(fn)}.Arn>:*]`, 'Invoke permission on the versions and aliases of one function.');
  }
  for (const [method, path] of scoped.routes) {
    ack(
      `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:<${logicalId(scoped.api)}>/${stage}/${method}${path}]`,
      'Route patterns are how the client and admin policies scope execute-api access.',
    );
  }
  ack('AwsSolutions-L1', 'Pinned to nodejs22.x deliberately: the runtime the project builds and tests against.');
  ack('AwsSolutions-APIG2', 'Every route validates its input in the handler and answers coded errors (API.md); API Gateway models would duplicate them.');
  ack('AwsSolutions-APIG3', 'IAM-authorised API; a WAF web ACL is an account-level choice that can be attached to the stage.');
  ack('AwsSolutions-COG4', 'Callers are AWS principals authorised by IAM (SigV4), not Cognito users.');
}

/** What the Migrate resource acts on: the migration files and the projection definitions. */
export function deployInputsHash(root = ROOT): string {
  const hash = createHash('sha256');
  for (const dir of ['migrations', 'functions/domain', 'functions/core/projections']) {
    for (const name of readdirSync(join(root, dir)).sort()) {
      if (name.endsWith('.sql') || name.endsWith('.ts')) hash.update(`${dir}/${name}\0`).update(readFileSync(join(root, dir, name)));
    }
  }
  return hash.digest('hex').slice(0, 16);
}
