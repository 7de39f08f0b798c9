// Checking a presented secret (a node token, an access token, a signature): shared by the node
// agent and the control plane.
import { createHash, timingSafeEqual } from 'node:crypto';

/** Constant-time equality of two secrets of any length. */
export function sameSecret(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}

/** The token of an `Authorization: Bearer <token>` header; '' when there is none. */
export function bearerToken(header: string | undefined): string {
  const h = header ?? '';
  return h.startsWith('Bearer ') ? h.slice(7) : '';
}
