import { App } from 'aws-cdk-lib';
import { LedgerlineStack } from './ledgerline-stack.ts';

export interface AslDefinition {
  StartAt: string;
  States: Record<string, { Type: string; [key: string]: unknown }>;
  [key: string]: unknown;
}

/**
 * The rebuild state machine exactly as CDK synthesizes it (bundling skipped: only the template is
 * needed), with its CloudFormation references resolved to local placeholders, for the local runner.
 */
export function synthesizedRebuildDefinition(options: { rebuildMaxIterations?: number } = {}): AslDefinition {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LedgerlineStack(app, 'ledgerline-local', { stage: 'local', ...options });
  const template = app.synth().getStackArtifact(stack.artifactId).template as {
    Resources: Record<string, { Type: string; Properties: { DefinitionString?: unknown } }>;
  };
  const machines = Object.values(template.Resources).filter((r) => r.Type === 'AWS::StepFunctions::StateMachine');
  if (machines.length !== 1) throw new Error(`expected one state machine, found ${machines.length}`);
  return JSON.parse(resolve(machines[0]!.Properties.DefinitionString)) as AslDefinition;
}

function resolve(value: unknown): string {
  if (typeof value === 'string') return value;
  const v = value as Record<string, unknown>;
  if (Array.isArray(v['Fn::Join'])) {
    const [separator, parts] = v['Fn::Join'] as [string, unknown[]];
    return parts.map(resolve).join(separator);
  }
  if (Array.isArray(v['Fn::GetAtt'])) return `arn:aws:lambda:local:000000000000:function:${(v['Fn::GetAtt'] as string[])[0]}`;
  if (typeof v.Ref === 'string') return v.Ref === 'AWS::Partition' ? 'aws' : v.Ref === 'AWS::Region' ? 'local' : v.Ref === 'AWS::AccountId' ? '000000000000' : `local-${v.Ref}`;
  throw new Error(`cannot resolve ${JSON.stringify(value)} in the state machine definition`);
}
