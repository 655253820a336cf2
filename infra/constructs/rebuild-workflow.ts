import { ArnFormat, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';

export interface RebuildWorkflowProps {
  stepFunction: lambda.IFunction;
  failures: sqs.IQueue;
  stage: string;
  /** Replay/drain iterations per execution before it continues as a new one (history stays far below 25,000 events). */
  maxIterations?: number;
}

/** Errors a step may be retried on: our TransientError and Lambda's own service errors. */
export const RETRYABLE_ERRORS = [
  'TransientError',
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
];

/**
 * The rebuild state machine (standard workflow, JSONPath): acquire, start, a replay loop and a drain
 * loop on the checkpoints the steps return, flip (giving way and draining again on a lock timeout),
 * release. Every Task retries transient errors with backoff; any other error is caught, recorded on
 * the rebuild, sent to the failures queue with the execution, projection and error, and fails the
 * execution. Past `maxIterations` loop turns the execution continues as a new one with the same
 * state (the lease carries over), so a rebuild of any size stays far below the history limit.
 */
export class RebuildWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: RebuildWorkflowProps) {
    super(scope, id);
    const maxIterations = props.maxIterations ?? 200;
    const stateMachineName = `ledgerline-${props.stage}-rebuild`;

    const step = (name: string, stepName: string, extra: Record<string, string> = {}) => {
      const task = new tasks.LambdaInvoke(this, name, {
        stateName: name,
        lambdaFunction: props.stepFunction,
        payloadResponseOnly: true,
        payload: sfn.TaskInput.fromObject({ step: stepName, 'state.$': '$', ...extra }),
        // No ResultPath: the default ("$") replaces the state with the step's result. (An explicit
        // "$" is also valid ASL, but aws-local-stepfunctions 3.0.0 nests the result under a "$" key.)
        retryOnServiceExceptions: false,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(15)),
      });
      task.addRetry({ errors: RETRYABLE_ERRORS, interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 6, jitterStrategy: sfn.JitterType.FULL });
      return task;
    };

    const sendFailure = new tasks.SqsSendMessage(this, 'SendFailure', {
      stateName: 'SendFailure',
      queue: props.failures,
      messageBody: sfn.TaskInput.fromObject({
        'execution.$': '$$.Execution.Id',
        'projection.$': '$.projection',
        'error.$': '$.error',
        'state.$': '$',
      }),
      resultPath: sfn.JsonPath.DISCARD,
    });
    sendFailure.addRetry({ errors: ['States.ALL'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 5 });
    const failed = new sfn.Fail(this, 'RebuildFailed', { stateName: 'RebuildFailed', error: 'RebuildFailed', cause: 'see the failures queue' });
    const recordFailure = new tasks.LambdaInvoke(this, 'RecordFailure', {
      stateName: 'RecordFailure',
      lambdaFunction: props.stepFunction,
      payloadResponseOnly: true,
      payload: sfn.TaskInput.fromObject({ step: 'fail', 'state.$': '$', 'error.$': '$.error' }),
      resultPath: sfn.JsonPath.DISCARD,
    });
    recordFailure.addRetry({ errors: RETRYABLE_ERRORS, interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
    recordFailure.addCatch(sendFailure, { resultPath: '$.recordError' });
    recordFailure.next(sendFailure);
    sendFailure.next(failed);

    // The execution owns the rebuild it acquires, so that a retried Acquire gets it again.
    const acquire = step('Acquire', 'acquire', { 'execution.$': '$$.Execution.Id' });
    const start = step('Start', 'start');
    const replay = step('Replay', 'replay');
    const drain = step('Drain', 'drain');
    const flip = step('Flip', 'flip');
    const release = step('Release', 'release');
    for (const task of [acquire, start, replay, drain, flip, release]) task.addCatch(recordFailure, { resultPath: '$.error' });

    const continueAsNew = new sfn.CustomState(this, 'ContinueAsNew', {
      stateJson: {
        Type: 'Task',
        Resource: 'arn:aws:states:::states:startExecution',
        Parameters: {
          'StateMachineArn.$': '$$.StateMachine.Id',
          Input: {
            'projection.$': '$.projection',
            'mode.$': '$.mode',
            'lease.$': '$.lease',
            iterations: 0,
            'AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$': '$$.Execution.Id',
          },
        },
        ResultPath: null,
        Retry: [{ ErrorEquals: ['States.ALL'], IntervalSeconds: 2, BackoffRate: 2, MaxAttempts: 5 }],
      },
    });
    continueAsNew.next(new sfn.Succeed(this, 'ContinuedAsNew', { stateName: 'ContinuedAsNew' }));
    const tooLong = sfn.Condition.numberGreaterThanEquals('$.iterations', maxIterations);

    const waitBeforeDrain = new sfn.Wait(this, 'WaitBeforeDrain', {
      stateName: 'WaitBeforeDrain',
      time: sfn.WaitTime.secondsPath('$.waitSeconds'),
    });
    const definition = new sfn.Choice(this, 'HasLease', { stateName: 'HasLease' })
      .when(sfn.Condition.isPresent('$.lease'), start)
      .otherwise(acquire);
    acquire.next(start);
    start.next(replay);
    replay.next(
      new sfn.Choice(this, 'Replayed', { stateName: 'Replayed' })
        .when(sfn.Condition.booleanEquals('$.done', true), drain)
        .when(tooLong, continueAsNew)
        .otherwise(replay),
    );
    drain.next(flip);
    flip.next(
      new sfn.Choice(this, 'Flipped', { stateName: 'Flipped' })
        .when(sfn.Condition.booleanEquals('$.flipped', true), release)
        .when(tooLong, continueAsNew)
        .otherwise(waitBeforeDrain),
    );
    waitBeforeDrain.next(drain);
    release.next(new sfn.Succeed(this, 'Rebuilt', { stateName: 'Rebuilt' }));

    const logGroup = new logs.LogGroup(this, 'Logs', {
      logGroupName: `/aws/vendedlogs/states/${stateMachineName}`,
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      stateMachineName,
      stateMachineType: sfn.StateMachineType.STANDARD,
      definitionBody: sfn.DefinitionBody.fromChainable(definition),
      logs: { destination: logGroup, level: sfn.LogLevel.ALL, includeExecutionData: false },
      tracingEnabled: true,
      timeout: Duration.days(7),
    });
    // Continue-as-new starts this same state machine: the ARN is built from its name to avoid a cycle.
    this.stateMachine.addToRolePolicy(
      new iam.PolicyStatement({
        actions: ['states:StartExecution'],
        resources: [Stack.of(this).formatArn({ service: 'states', resource: 'stateMachine', resourceName: stateMachineName, arnFormat: ArnFormat.COLON_RESOURCE_NAME })],
      }),
    );
  }
}
