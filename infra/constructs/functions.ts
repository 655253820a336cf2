import { Duration } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface FunctionProps {
  entry: string;
  /** In the VPC beside the database (the postgres.js driver through RDS Proxy); absent with the Data API. */
  network?: { vpc: ec2.IVpc; securityGroup: ec2.ISecurityGroup };
  environment: Record<string, string>;
  timeout?: Duration;
  memorySize?: number;
  reservedConcurrentExecutions?: number;
  copyMigrations?: boolean;
}

/**
 * Every Lambda of the product the same way: Node.js 22 on arm64, an ESM bundle built by esbuild (no
 * Docker), logs kept a month; in the VPC's isolated subnets only when it opens database connections.
 */
export function nodeFunction(scope: Construct, id: string, props: FunctionProps): nodejs.NodejsFunction {
  return new nodejs.NodejsFunction(scope, id, {
    entry: join(ROOT, props.entry),
    handler: 'handler',
    runtime: lambda.Runtime.NODEJS_22_X,
    architecture: lambda.Architecture.ARM_64,
    timeout: props.timeout ?? Duration.seconds(30),
    memorySize: props.memorySize ?? 512,
    ...(props.network
      ? { vpc: props.network.vpc, vpcSubnets: { subnets: props.network.vpc.isolatedSubnets }, securityGroups: [props.network.securityGroup] }
      : {}),
    environment: { NODE_OPTIONS: '--enable-source-maps', ...props.environment },
    tracing: lambda.Tracing.ACTIVE,
    logGroup: new logs.LogGroup(scope, `${id}Logs`, { retention: logs.RetentionDays.ONE_MONTH }),
    depsLockFilePath: join(ROOT, 'package-lock.json'),
    projectRoot: ROOT,
    ...(props.reservedConcurrentExecutions === undefined ? {} : { reservedConcurrentExecutions: props.reservedConcurrentExecutions }),
    bundling: {
      format: nodejs.OutputFormat.ESM,
      target: 'node22',
      mainFields: ['module', 'main'],
      minify: true,
      sourceMap: true,
      // Some dependencies are CommonJS: give the ESM bundle a require().
      banner: "import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);",
      ...(props.copyMigrations
        ? {
            commandHooks: {
              beforeBundling: () => [],
              beforeInstall: () => [],
              afterBundling: (input: string, output: string) => [`cp -r ${input}/migrations ${output}/migrations`],
            },
          }
        : {}),
    },
  });
}
