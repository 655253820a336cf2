import { AppError } from '../errors.ts';

export class FencingTokenLostError extends AppError {
  constructor(rebuildId: string) {
    super('FENCING_TOKEN_LOST', 'conflict', `rebuild ${rebuildId} is no longer held by this worker`);
  }
}

export class RebuildInProgressError extends AppError {
  constructor(projection: string, rebuildId: string) {
    super('REBUILD_IN_PROGRESS', 'conflict', `projection ${projection} is already being rebuilt (${rebuildId})`, {
      details: { rebuildId },
    });
  }
}

export class ProjectionNotFoundError extends AppError {
  constructor(name: string) {
    super('PROJECTION_NOT_FOUND', 'not_found', `no projection named ${JSON.stringify(name)}`);
  }
}

export class RebuildNotFoundError extends AppError {
  constructor(rebuildId: string) {
    super('REBUILD_NOT_FOUND', 'not_found', `no rebuild ${rebuildId}`);
  }
}

export class RebuildNotCancellableError extends AppError {
  constructor(rebuildId: string, reason: string) {
    super('REBUILD_NOT_CANCELLABLE', 'conflict', `rebuild ${rebuildId} cannot be cancelled: ${reason}`);
  }
}

export class RebuildNotResumableError extends AppError {
  constructor(rebuildId: string, phase: string) {
    super('REBUILD_NOT_RESUMABLE', 'conflict', `rebuild ${rebuildId} has ended (${phase}); it cannot be resumed`, { details: { rebuildId, phase } });
  }
}
