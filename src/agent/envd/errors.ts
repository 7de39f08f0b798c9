// Error vocabulary of the envd edge: init and domain errors become Connect codes (RPC) or
// HTTP statuses with a JSON {code, message} body (REST), as envd answers them.
import { Code, ConnectError } from '@connectrpc/connect';
import { NestboxError } from '../../core/errors.ts';
import { InitError } from '../../runtime/init/errors.ts';

/** The init answers `not_found` both for a missing path and an unknown user; this tells them apart. */
export const isUnknownUser = (e: InitError) => e.code === 'not_found' && e.message.startsWith('unknown user');

const INIT_TO_CONNECT: Record<string, Code> = {
  invalid: Code.InvalidArgument,
  not_found: Code.NotFound,
  exists: Code.AlreadyExists,
  not_dir: Code.InvalidArgument,
  is_dir: Code.InvalidArgument,
  permission: Code.PermissionDenied,
  // ResourceExhausted would reach SDK users as a RateLimitError; a full disk is not that.
  no_space: Code.Internal,
  unavailable: Code.Unavailable,
  protocol: Code.Internal,
  internal: Code.Internal,
};

const DOMAIN_TO_CONNECT: Record<string, Code> = {
  invalid: Code.InvalidArgument,
  not_found: Code.NotFound,
  conflict: Code.FailedPrecondition,
  unavailable: Code.Unavailable,
  limit: Code.ResourceExhausted,
  unauthorized: Code.Unauthenticated,
  internal: Code.Internal,
};

/** Any error thrown while serving an RPC, as the ConnectError the client sees. */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof InitError) {
    if (isUnknownUser(e)) return new ConnectError(e.message, Code.Unauthenticated);
    return new ConnectError(e.message, INIT_TO_CONNECT[e.code] ?? Code.Internal);
  }
  if (e instanceof NestboxError) return new ConnectError(e.message, DOMAIN_TO_CONNECT[e.code] ?? Code.Internal);
  return ConnectError.from(e, Code.Internal);
}

const INIT_TO_HTTP: Record<string, number> = {
  invalid: 400,
  not_found: 404,
  exists: 409,
  not_dir: 400,
  is_dir: 400,
  permission: 403,
  no_space: 507,
  unavailable: 502,
  protocol: 502,
  internal: 500,
};

/** Any error thrown while serving a REST route, as HTTP status + envd's {code, message}. */
export function toHttpError(e: unknown): { status: number; message: string } {
  if (e instanceof InitError) {
    if (isUnknownUser(e)) return { status: 401, message: e.message };
    return { status: INIT_TO_HTTP[e.code] ?? 500, message: e.message };
  }
  if (e instanceof HttpError) return { status: e.status, message: e.message };
  if (e instanceof NestboxError) {
    const status = { invalid: 400, not_found: 404, conflict: 409, unavailable: 503, limit: 429, unauthorized: 401, internal: 500 }[e.code];
    return { status, message: e.message };
  }
  return { status: 500, message: 'internal error' };
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/** What a call of a feature Nestbox does not implement answers: never a hang. */
export const unimplemented = (feature: string) => new ConnectError(`${feature} is not implemented by Nestbox`, Code.Unimplemented);
