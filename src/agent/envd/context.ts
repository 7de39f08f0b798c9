// Per-request facts every envd handler needs: which sandbox, which user, its init.
import { createContextKey } from '@connectrpc/connect';
import type { InitClient } from '../../runtime/init/client.ts';
import type { SandboxRuntime } from '../../runtime/sandbox-runtime.ts';

export const DEFAULT_USER = 'user';

export interface EnvdRequestContext {
  sandboxId: string;
  /** The sandbox's own environment variables (from its record), applied to every process. */
  envVars: Record<string, string>;
  /** From `Authorization: Basic base64("<user>:")`, else `user`. */
  user: string;
  /** The template's working directory (an imported image's), for processes that name none. */
  cwd?: string;
  init: InitClient;
  runtime: SandboxRuntime;
}

export const envdContextKey = createContextKey<EnvdRequestContext | null>(null, { description: 'nestbox envd request' });

/**
 * The client's own Authorization header. The control plane's sandbox proxy authenticates to the
 * agent with `Authorization: Bearer <node token>` and moves the client's header to
 * `X-Envd-Authorization`; a direct caller may also send its Basic user in `Authorization`.
 */
export function clientAuthorization(headers: { [k: string]: string | string[] | undefined }): string | undefined {
  const pick = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);
  return pick(headers['x-envd-authorization']) ?? pick(headers.authorization);
}

/** The user selected by the request's client Authorization (Basic), else `user`. */
export function requestUser(headers: { [k: string]: string | string[] | undefined }): string {
  return basicAuthUser(clientAuthorization(headers)) ?? DEFAULT_USER;
}

/**
 * The user named by `Authorization: Basic base64("<user>:")` (the SDK's user selection), or
 * null when the header is absent or not Basic. The password part is ignored, as envd does.
 */
export function basicAuthUser(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Basic\s+([A-Za-z0-9+/=_-]+)\s*$/i.exec(header);
  if (!m) return null;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const name = (colon >= 0 ? decoded.slice(0, colon) : decoded).trim();
  return name || null;
}

/** Keep-alive interval from `Keepalive-Ping-Interval` (seconds; the SDK sends 50). */
export function keepaliveIntervalMs(header: string | null | undefined, fallbackMs = 60_000): number {
  if (!header) return fallbackMs;
  const s = Number(header);
  if (!Number.isFinite(s) || s <= 0) return fallbackMs;
  return Math.min(Math.max(s * 1000, 100), 3_600_000);
}

/** `~` and `~/x` name the user's home; the init resolves relative paths against it. */
export function expandPath(p: string): string {
  if (p === '~') return '.';
  if (p.startsWith('~/')) return p.slice(2) || '.';
  return p;
}
