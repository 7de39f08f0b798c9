// Which sandbox and port a request to the sandbox proxy is for (pure; no I/O).
import { isIP } from 'node:net';

/** The port envd listens on in an E2B sandbox; Nestbox serves it from the node agent. */
export const ENVD_PORT = 49983;

export type RouteResult =
  | { ok: true; sandboxId: string; port: number; by: 'headers' | 'host' }
  | { ok: false; sandboxId: string | null; reason: string };

const ID = /^[a-z0-9]{1,64}$/;

function hostName(host: string | undefined): string {
  if (!host) return '';
  let h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end === -1 ? h : h.slice(1, end);
  }
  const colon = h.lastIndexOf(':');
  if (colon !== -1 && h.indexOf(':') === colon) h = h.slice(0, colon); // host:port, not a bare IPv6
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

function parsePort(raw: string | undefined): number | null {
  if (!raw || !/^\d{1,5}$/.test(raw)) return null;
  const n = Number(raw);
  return n >= 1 && n <= 65535 ? n : null;
}

function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name];
  return (Array.isArray(v) ? v[0] : v)?.trim();
}

/**
 * E2B's rule: when the Host is localhost, an IP address or `sandbox.<domain>`, the sandbox and
 * port come from the `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers; otherwise from the host
 * name `{port}-{sandboxId}[-{clientId}].{domain}` (any domain, `localhost` included).
 */
export function routeRequest(headers: Record<string, string | string[] | undefined>): RouteResult {
  const host = hostName(header(headers, 'host'));
  const byHeaders = host === '' || host === 'localhost' || isIP(host) !== 0 || host.startsWith('sandbox.');
  if (byHeaders) {
    const id = header(headers, 'e2b-sandbox-id')?.toLowerCase();
    const portRaw = header(headers, 'e2b-sandbox-port');
    if (!id) return { ok: false, sandboxId: null, reason: 'missing E2b-Sandbox-Id header' };
    if (!ID.test(id)) return { ok: false, sandboxId: id, reason: 'invalid sandbox id' };
    const port = parsePort(portRaw);
    if (port === null) return { ok: false, sandboxId: id, reason: 'missing or invalid E2b-Sandbox-Port header' };
    return { ok: true, sandboxId: id, port, by: 'headers' };
  }
  const dot = host.indexOf('.');
  const label = dot === -1 ? host : host.slice(0, dot);
  const m = /^(\d{1,5})-([a-z0-9]+)(?:-[a-z0-9]+)?$/.exec(label);
  if (!m || dot === -1) return { ok: false, sandboxId: null, reason: `host ${host} is not {port}-{sandboxId}.{domain}` };
  const port = parsePort(m[1]);
  const id = m[2]!;
  if (port === null) return { ok: false, sandboxId: id, reason: 'invalid port in host name' };
  if (!ID.test(id)) return { ok: false, sandboxId: id, reason: 'invalid sandbox id' };
  return { ok: true, sandboxId: id, port, by: 'host' };
}

/** The sandbox proxy's port when nothing else is configured (E2B_SANDBOX_URL of `nestbox up`). */
export const DEFAULT_PROXY_PORT = 3002;

/**
 * The domain to give clients when none is configured (NESTBOX_DOMAIN): `localhost:<proxy port>`.
 * The SDK's getHost(port) is `<port>-<id>.<domain>` and adds no port of its own, so the proxy's
 * port rides in the domain; browsers and most resolvers send `*.localhost` to loopback, where
 * the proxy routes by that host name. Production sets NESTBOX_DOMAIN (wildcard DNS, TLS).
 */
export function loopbackSandboxDomain(proxyPort: number): string {
  return `localhost:${proxyPort}`;
}

export interface RequestTarget {
  /** Path as received, always starting with `/`. */
  path: string;
  /** `?…` or ''. */
  search: string;
  pathname: string;
  query: URLSearchParams;
}

/**
 * Splits a request target (origin or absolute form) into path and query. Null for paths with
 * `.`/`..` segments (also percent-encoded, or behind an encoded slash or a backslash): forwarded under a per-sandbox prefix, they could
 * climb out of it if anything on the way normalised them.
 */
export function parseTarget(url: string | undefined): RequestTarget | null {
  let raw = url ?? '/';
  if (!raw.startsWith('/')) {
    const m = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*(.*)$/i.exec(raw);
    if (!m) return null;
    raw = m[1] || '/';
    if (!raw.startsWith('/')) raw = '/' + raw;
  }
  const hash = raw.indexOf('#');
  if (hash !== -1) raw = raw.slice(0, hash);
  const q = raw.indexOf('?');
  const pathname = q === -1 ? raw : raw.slice(0, q);
  const search = q === -1 ? '' : raw.slice(q);
  for (const seg of pathname.split('/')) {
    const decoded = seg.replace(/%2e/gi, '.').replace(/%2f/gi, '/').replace(/%5c/gi, '\\');
    if (decoded.split(/[/\\]/).some((p) => p === '.' || p === '..')) return null;
  }
  return { path: pathname + search, search, pathname, query: new URLSearchParams(search) };
}
