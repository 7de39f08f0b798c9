// A small client of the Nestbox public API for the CLI: JSON in and out, the API key in
// X-API-Key, errors from the API's `{code, message}` body turned into one readable line.
import { STATUS_CODES, type IncomingHttpHeaders } from 'node:http';
import { httpRequest, readBody } from './http-request.ts';

export const DEFAULT_API_URL = 'http://127.0.0.1:3000';

export interface ApiConfig {
  apiUrl: string;
  apiKey: string;
}

/** Anything the CLI reports as one line and exit code 1 (never a stack trace). */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** The API answered with an error status. */
export class ApiRequestError extends CliError {
  constructor(
    readonly status: number,
    readonly apiMessage: string,
  ) {
    super(`${apiMessage} (HTTP ${status})`);
    this.name = 'ApiRequestError';
  }
}

export interface ApiOptionValues {
  apiUrl?: string;
  apiKey?: string;
}

/** Flags first, then E2B_API_URL / E2B_API_KEY (or NESTBOX_API_KEY), then the default URL. */
export function resolveConfig(flags: ApiOptionValues, env: NodeJS.ProcessEnv = process.env): ApiConfig {
  const apiUrl = resolveApiUrl(flags, env);
  const apiKey = flags.apiKey || env.E2B_API_KEY || env.NESTBOX_API_KEY;
  if (!apiKey) throw new CliError('no API key: set E2B_API_KEY (or NESTBOX_API_KEY), or pass --api-key');
  return { apiUrl, apiKey };
}

/** --api-url, then E2B_API_URL, then the default; checked to be an http(s) URL. */
export function resolveApiUrl(flags: { apiUrl?: string }, env: NodeJS.ProcessEnv = process.env): string {
  const apiUrl = (flags.apiUrl || env.E2B_API_URL || DEFAULT_API_URL).replace(/\/+$/, '');
  let parsed: URL;
  try {
    parsed = new URL(apiUrl);
  } catch {
    throw new CliError(`invalid API URL "${apiUrl}": expected e.g. ${DEFAULT_API_URL}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new CliError(`invalid API URL "${apiUrl}": only http and https are supported`);
  }
  return apiUrl;
}

/** What each network error of a request means, said for a user. */
const NETWORK_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'connection refused (is Nestbox running there? see E2B_API_URL or --api-url)',
  ENOTFOUND: 'no such host',
  EAI_AGAIN: 'the host name could not be resolved',
  ECONNRESET: 'the connection was reset',
  ETIMEDOUT: 'the connection timed out',
  EHOSTUNREACH: 'the host is unreachable',
};

/** The error codes of a request that never reached its server (or lost it). */
export const NETWORK_ERROR_CODES = Object.keys(NETWORK_ERRORS);

export type Query = Record<string, string | number | boolean | undefined>;

export interface ApiResponse<T> {
  status: number;
  headers: { get(name: string): string | null };
  body: T;
}

export class ApiClient {
  constructor(readonly config: ApiConfig) {}

  async request<T = unknown>(method: string, path: string, opts: { query?: Query; body?: unknown } = {}): Promise<ApiResponse<T>> {
    const url = new URL(this.config.apiUrl + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { 'X-API-Key': this.config.apiKey, Accept: 'application/json' };
    if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
    let status: number;
    let answered: IncomingHttpHeaders;
    let text: string;
    try {
      const res = await httpRequest(url, { method, headers, ...(opts.body === undefined ? {} : { body: JSON.stringify(opts.body) }) });
      status = res.statusCode ?? 0;
      answered = res.headers;
      text = (await readBody(res)).toString();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = (e.code && NETWORK_ERRORS[e.code]) ?? e.code ?? e.message;
      throw new CliError(`cannot reach the Nestbox API at ${this.config.apiUrl}: ${why}`);
    }
    const ok = status >= 200 && status < 300;
    let body: unknown = undefined;
    if (text !== '') {
      try {
        body = JSON.parse(text);
      } catch {
        if (ok) throw new CliError(`the API at ${this.config.apiUrl} answered ${method} ${path} with something that is not JSON`);
      }
    }
    if (!ok) {
      const message =
        body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string'
          ? (body as { message: string }).message
          : text.trim().split('\n')[0]?.slice(0, 200) || STATUS_CODES[status] || 'request failed';
      throw new ApiRequestError(status, message);
    }
    const get = (name: string) => {
      const v = answered[name.toLowerCase()];
      return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
    };
    return { status, headers: { get }, body: body as T };
  }

  get<T>(path: string, query?: Query) {
    return this.request<T>('GET', path, { query });
  }

  post<T>(path: string, body?: unknown) {
    return this.request<T>('POST', path, { body: body ?? {} });
  }

  delete<T>(path: string) {
    return this.request<T>('DELETE', path);
  }
}

/** A path segment from user input (ids), so that "../x" cannot reach another route. */
export const seg = (s: string) => encodeURIComponent(s);
