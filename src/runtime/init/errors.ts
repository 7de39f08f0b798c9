// Errors of calls to the sandbox init (docs/init-protocol.md).

/** The error codes the init may send; anything else in an error frame is a protocol violation. */
export const SPEC_CODES = ['invalid', 'not_found', 'exists', 'not_dir', 'is_dir', 'permission', 'no_space', 'internal'] as const;
export type InitErrorCode = (typeof SPEC_CODES)[number] | 'protocol' | 'unavailable';

export class InitError extends Error {
  constructor(
    readonly code: InitErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'InitError';
  }
}

/** The init broke the protocol: the call it answers fails, nothing else. */
export const protocolError = (msg: string) => new InitError('protocol', `init protocol violation: ${msg}`);
