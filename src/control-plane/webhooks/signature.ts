// Webhook signatures: HMAC-SHA256 over `${timestamp}.${body}` with the webhook's secret, sent as
// `Nestbox-Signature: t=<unix seconds>,v1=<hex>`. The timestamp is signed too, so a captured
// request cannot be replayed later than the receiver's tolerance.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'Nestbox-Signature';
export const DEFAULT_TOLERANCE_S = 300;

function hmacHex(secret: string, timestampS: number, body: string | Uint8Array): string {
  return createHmac('sha256', secret).update(`${timestampS}.`).update(body).digest('hex');
}

/** The header value for `body` signed at `at`. */
export function signWebhook(secret: string, body: string | Uint8Array, at: Date): string {
  const t = Math.floor(at.getTime() / 1000);
  return `t=${t},v1=${hmacHex(secret, t, body)}`;
}

/**
 * Whether `header` is a valid signature of `body` (the raw bytes received, before any JSON
 * parsing) with `secret`, made within `toleranceS` of `now` (either way). Several v1= values
 * are accepted, any of which may match.
 */
export function verifyWebhookSignature(
  secret: string,
  header: string | undefined | null,
  body: string | Uint8Array,
  opts: { toleranceS?: number; now?: Date } = {},
): boolean {
  if (!header || header.length > 4096) return false;
  let t: number | undefined;
  const candidates: Buffer[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't' && /^\d{1,12}$/.test(value)) t = Number(value);
    else if (key === 'v1' && /^[0-9a-f]{64}$/i.test(value)) candidates.push(Buffer.from(value, 'hex'));
  }
  if (t === undefined || candidates.length === 0) return false;
  const nowS = Math.floor((opts.now ?? new Date()).getTime() / 1000);
  if (Math.abs(nowS - t) > (opts.toleranceS ?? DEFAULT_TOLERANCE_S)) return false;
  const expected = Buffer.from(hmacHex(secret, t, body), 'hex');
  // Compare against every candidate, so the time taken does not say which one matched.
  let ok = false;
  for (const c of candidates) ok = timingSafeEqual(c, expected) || ok;
  return ok;
}
