// How the node API carries errors, both ways: the agent answers an error code (Nestbox's own,
// or the sandbox init's) with an HTTP status; the control plane reads a status back as an error
// code and says whether the call may have taken effect and whether to try again.
import type { ErrorCode } from '../core/errors.ts';
import type { NodeErrorBody } from './wire.ts';

/** HTTP status of each error code the agent answers (the sandbox init's codes included). */
const STATUS_BY_CODE: Readonly<Record<string, number>> = {
  invalid: 400, unauthorized: 401, permission: 403, not_found: 404, conflict: 409, exists: 409, not_dir: 400,
  is_dir: 400, limit: 429, no_space: 507, internal: 500, protocol: 502, unavailable: 503,
};

/** The status the agent answers an error code with (500 for a code it does not know). */
export function statusOfCode(code: string): number {
  return STATUS_BY_CODE[code] ?? 500;
}

/** The error code the control plane reads a status as. */
const CODE_BY_STATUS: Readonly<Record<number, ErrorCode>> = {
  400: 'invalid', 404: 'not_found', 409: 'conflict', 429: 'limit', 503: 'unavailable',
};

export function codeOfStatus(status: number): ErrorCode {
  return CODE_BY_STATUS[status] ?? 'internal';
}

/** A node's error answer as the control plane reads it. */
export interface NodeFailure {
  code: ErrorCode;
  message: string;
  /** The call may or may not have taken effect (the node failed while handling it). */
  uncertain: boolean;
  /** Trying again later may succeed (the node said so, or is unavailable). */
  retryable: boolean;
}

/** Reads an error answer (status and body text, JSON or not). */
export function readNodeFailure(status: number, text: string): NodeFailure {
  let message = text;
  let retryable = false;
  try {
    const parsed = JSON.parse(text) as Partial<NodeErrorBody>;
    message = parsed.message ?? text;
    retryable = parsed.retryable === true;
  } catch {
    /* not JSON */
  }
  return {
    code: codeOfStatus(status),
    message,
    uncertain: status >= 500 && status !== 503,
    retryable: retryable || status === 503,
  };
}
