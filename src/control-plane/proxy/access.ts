// Who may reach a secure sandbox's envd: the access token, or a file URL signed with it (pure).
import { createHash } from 'node:crypto';
import { sameSecret } from '../../http/credentials.ts';

export type FileOperation = 'read' | 'write';

/**
 * E2B's file URL signature: "v1_" + base64 (no padding) of
 * sha256(`${path}:${operation}:${username}:${token}` [+ `:${expiration}`]). An absent username or
 * path signs as ''.
 */
export function fileSignature(path: string, operation: FileOperation, username: string, token: string, expiration?: number | string | null): string {
  const raw = `${path}:${operation}:${username}:${token}` + (expiration !== undefined && expiration !== null && expiration !== '' ? `:${expiration}` : '');
  return 'v1_' + createHash('sha256').update(raw, 'utf8').digest('base64').replace(/=+$/, '');
}

export interface EnvdAccessRequest {
  secure: boolean;
  /** The sandbox's envd access token. */
  token: string;
  method: string;
  pathname: string;
  query: URLSearchParams;
  /** The X-Access-Token header, if any. */
  accessToken: string | undefined;
  nowSeconds: number;
}

export type AccessDecision = { ok: true } | { ok: false; message: string };

const ALLOW: AccessDecision = { ok: true };
const deny = (message: string): AccessDecision => ({ ok: false, message });

/**
 * envd's rules on a secure sandbox: every route needs `X-Access-Token` except GET /health, and
 * GET/POST /files, which take the token or a signature (`signature`, `signature_expiration`).
 * A sandbox created with secure=false is open to whoever can reach it, as on E2B.
 */
export function checkEnvdAccess(r: EnvdAccessRequest): AccessDecision {
  if (!r.secure) return ALLOW;
  const method = r.method.toUpperCase();
  const read = method === 'GET' || method === 'HEAD';
  if (read && r.pathname === '/health') return ALLOW;
  const header = r.accessToken;
  const fileOp: FileOperation | null = r.pathname === '/files' ? (read ? 'read' : method === 'POST' ? 'write' : null) : null;
  if (fileOp === null || header) {
    if (!header) return deny('missing X-Access-Token header');
    return sameSecret(header, r.token) ? ALLOW : deny('invalid access token');
  }
  const signature = r.query.get('signature');
  if (!signature) return deny('missing X-Access-Token header or signature');
  const expiration = r.query.get('signature_expiration');
  if (expiration !== null && !/^\d{1,15}$/.test(expiration)) return deny('invalid signature_expiration');
  const expected = fileSignature(r.query.get('path') ?? '', fileOp, r.query.get('username') ?? '', r.token, expiration);
  if (!sameSecret(signature, expected)) return deny('invalid signature');
  if (expiration !== null && Number(expiration) < r.nowSeconds) return deny('signature is expired');
  return ALLOW;
}
