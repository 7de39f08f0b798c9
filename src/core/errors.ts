// Typed domain errors. Edges (HTTP, CLI) map `code` to their own vocabulary once.
export type ErrorCode =
  | 'invalid'
  | 'not_found'
  | 'conflict'
  | 'unavailable'
  | 'limit'
  | 'unauthorized'
  | 'internal';

export class NestboxError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryable = false,
  ) {
    super(message);
    this.name = 'NestboxError';
  }
}

export const invalid = (msg: string) => new NestboxError('invalid', msg);
export const notFound = (msg: string) => new NestboxError('not_found', msg);
export const conflict = (msg: string) => new NestboxError('conflict', msg);
export const unavailable = (msg: string) => new NestboxError('unavailable', msg, true);
