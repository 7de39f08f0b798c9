import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { NestboxError, type ErrorCode } from '../../core/errors.ts';
import { NodeCallError } from '../node-client.ts';

/** The one mapping of domain error codes to HTTP statuses for the public API. */
export const STATUS_BY_CODE: Readonly<Record<ErrorCode, number>> = {
  invalid: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  limit: 429,
  unavailable: 503,
  internal: 500,
};

/** An error raised by the HTTP layer itself (auth, unsupported features, unknown ids). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export const sandboxNotFound = (sandboxId: string) => new ApiError(404, `sandbox "${sandboxId}" not found`);
export const notImplemented = (feature: string) => new ApiError(501, `${feature} is not supported by this server`);

export interface ErrorBody {
  code: number;
  message: string;
}

function send(reply: FastifyReply, status: number, message: string) {
  const body: ErrorBody = { code: status, message };
  return reply.code(status).send(body);
}

/** Converts anything thrown by a route, hook or Fastify itself into `{code, message}`. */
export function replyWithError(err: unknown, req: FastifyRequest, reply: FastifyReply) {
  if (err instanceof ApiError) return send(reply, err.status, err.message);
  if (err instanceof NestboxError) {
    const status = STATUS_BY_CODE[err.code] ?? 500;
    if (err instanceof NodeCallError && status === 500) {
      // A node's own account of why it failed (a create runc refused, say): the client gets the
      // cause, in E2B's shape, instead of a bare "internal error".
      req.log.error({ err }, 'node call failed');
      return send(reply, 500, err.message);
    }
    if (status >= 500 && status !== 503) {
      req.log.error({ err }, 'internal error');
      return send(reply, 500, 'internal error');
    }
    if (status === 503) reply.header('Retry-After', '1');
    return send(reply, status, err.message);
  }
  const e = err as Partial<FastifyError>;
  if (e.validation) return send(reply, 400, e.message ?? 'invalid request');
  // Fastify's own client errors: malformed JSON, body too large, unsupported media type, bad URL.
  if (typeof e.code === 'string' && e.code.startsWith('FST_') && e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
    return send(reply, e.statusCode, e.message ?? 'bad request');
  }
  // Checked before the database: a socket reset while reading the body is the client's own.
  if (isClientAbort(err, req)) {
    req.log.info({ err: (err as Error).message }, 'client closed the request before sending all of it');
    return send(reply, 400, 'the request was aborted by the client before its body was complete');
  }
  if (isDatabaseUnavailable(err)) {
    // The store dropped the connection or is restarting: a retry is safe (the reconciler settles
    // whatever a transition cut short had started on a node).
    req.log.warn({ err }, 'database unavailable');
    reply.header('Retry-After', '1');
    return send(reply, 503, 'the database is unavailable; retry shortly');
  }
  req.log.error({ err }, 'internal error');
  return send(reply, 500, 'internal error');
}

/** Node's "aborted" (ECONNRESET) from the request stream, or a request whose stream the client cut. */
function isClientAbort(err: unknown, req: FastifyRequest): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return (e.code === 'ECONNRESET' && e.message === 'aborted') || req.raw.readableAborted === true;
}

// SQLSTATE class 08 (connection exception) and 57P01-57P03 (the server shut the session down).
const DB_UNAVAILABLE_CODES = new Set(['08000', '08001', '08003', '08004', '08006', '57P01', '57P02', '57P03']);

function isDatabaseUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  if (typeof e.code === 'string' && (DB_UNAVAILABLE_CODES.has(e.code) || e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET')) return true;
  return typeof e.message === 'string' && /^Connection terminated|^Client has encountered a connection error|timeout exceeded when trying to connect/.test(e.message);
}

export function installErrorHandling(app: FastifyInstance) {
  app.setErrorHandler((err, req, reply) => replyWithError(err, req, reply));
  app.setNotFoundHandler((req, reply) => send(reply, 404, `route ${req.method} ${(req.url.split('?')[0] ?? '').slice(0, 200)} not found`));
}

/** For Fastify's `frameworkErrors` option (errors raised before routing, e.g. a malformed URL). */
export function frameworkErrorHandler(err: FastifyError, req: FastifyRequest, reply: FastifyReply) {
  const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
  return send(reply, status, err.message || 'bad request');
}
