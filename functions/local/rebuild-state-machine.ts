import { StateMachine } from 'aws-local-stepfunctions';
import type { RebuildInput, Step } from '../workflow/rebuild-steps.ts';

export interface LocalRebuildRunnerOptions {
  /** The ASL as synthesized by CDK (infra/local-definition.ts). */
  definition: { States: Record<string, { Type: string; [key: string]: unknown }>; [key: string]: unknown };
  /** The real Lambda handler of the rebuild steps. */
  steps: (event: { step: Step; state: RebuildInput; error?: { Error?: string; Cause?: string } }) => Promise<RebuildInput>;
  /** Where the SendFailure state's message goes (the local failures queue). */
  sendFailure: (messageBody: unknown) => Promise<void>;
  /** Shorten retry intervals and waits (milliseconds); the definition's own values otherwise. */
  retryIntervalMs?: number;
  waitMs?: number;
}

/**
 * Runs the rebuild state machine that CDK synthesizes with aws-local-stepfunctions, every Task state
 * mapped to a local handler: the Lambda tasks to the real step handler, the SQS task to the local
 * failures queue, continue-as-new to a new local execution. A Task state without a handler is an
 * error at construction, so the runner can never fall through to calling real AWS.
 */
export function localRebuildRunner(options: LocalRebuildRunnerOptions) {
  const lambdaTask = (input: unknown) => options.steps(input as Parameters<LocalRebuildRunnerOptions['steps']>[0]) as Promise<never>;
  const executions = new Set<Promise<unknown>>();
  const handlers: Record<string, (input: unknown) => Promise<unknown>> = {
    Acquire: lambdaTask,
    Start: lambdaTask,
    Replay: lambdaTask,
    Drain: lambdaTask,
    Flip: lambdaTask,
    Release: lambdaTask,
    RecordFailure: lambdaTask,
    SendFailure: async (input) => {
      await options.sendFailure((input as { MessageBody: unknown }).MessageBody);
      return { MessageId: 'local' };
    },
    ContinueAsNew: async (input) => {
      const execution = run((input as { Input: RebuildInput }).Input);
      executions.add(execution);
      void execution.catch(() => undefined).finally(() => executions.delete(execution));
      return { ExecutionArn: 'arn:aws:states:local:000000000000:execution:rebuild:continued' };
    },
  };
  const tasks = Object.entries(options.definition.States).filter(([, s]) => s.Type === 'Task').map(([name]) => name);
  const missing = tasks.filter((name) => !handlers[name]);
  if (missing.length > 0) throw new Error(`Task states without a local handler: ${missing.join(', ')}`);

  const machine = new StateMachine(options.definition as never, { validationOptions: { checkArn: false } });
  const retryIntervalOverrides = options.retryIntervalMs === undefined ? undefined : Object.fromEntries(tasks.map((t) => [t, options.retryIntervalMs!]));
  const waitTimeOverrides =
    options.waitMs === undefined
      ? undefined
      : Object.fromEntries(Object.entries(options.definition.States).filter(([, s]) => s.Type === 'Wait').map(([n]) => [n, options.waitMs!]));

  function run(input: RebuildInput): Promise<unknown> {
    const name = `local-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    const execution = machine.run(input as never, {
      context: {
        Execution: { Id: `arn:aws:states:local:000000000000:execution:rebuild:${name}`, Name: name, StartTime: new Date().toISOString(), Input: input as never, RoleArn: 'local' },
        StateMachine: { Id: 'arn:aws:states:local:000000000000:stateMachine:rebuild', Name: 'rebuild' },
      } as never,
      overrides: {
        taskResourceLocalHandlers: handlers as never,
        ...(retryIntervalOverrides ? { retryIntervalOverrides } : {}),
        ...(waitTimeOverrides ? { waitTimeOverrides } : {}),
      },
    });
    return execution.result;
  }

  return {
    taskStates: tasks,
    run,
    /** Waits for executions started by continue-as-new. */
    async idle() {
      while (executions.size > 0) await Promise.allSettled([...executions]);
    },
  };
}
