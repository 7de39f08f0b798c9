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
  /** A retry may succeed (no node could take it now, the node did not answer). */
  readonly retryable: boolean;

  constructor(
    readonly code: ErrorCode,
    message: string,
    opts: { retryable?: boolean } = {},
  ) {
    super(message);
    this.name = 'NestboxError';
    this.retryable = opts.retryable ?? false;
  }
}

export const invalid = (msg: string) => new NestboxError('invalid', msg);
export const notFound = (msg: string) => new NestboxError('not_found', msg);
export const conflict = (msg: string) => new NestboxError('conflict', msg);
export const unavailable = (msg: string) => new NestboxError('unavailable', msg, { retryable: true });
