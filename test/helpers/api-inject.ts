import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';

export interface ApiAnswer {
  status: number;
  json: any;
  headers: Record<string, unknown>;
}

/** Requests to an in-process API server with an API key (`key: null` sends none). */
export function apiCaller(app: () => FastifyInstance, defaultKey: () => string) {
  return async (o: { method?: string; url: string; body?: unknown; key?: string | null }): Promise<ApiAnswer> => {
    const res = await app().inject({
      method: (o.method ?? 'GET') as 'GET',
      url: o.url,
      headers: o.key === null ? {} : { 'x-api-key': o.key ?? defaultKey() },
      ...(o.body === undefined ? {} : { payload: o.body as object }),
    });
    return { status: res.statusCode, json: res.body ? JSON.parse(res.body) : undefined, headers: res.headers };
  };
}

/** An error answer is exactly `{code, message}` with the status as code. */
export function assertApiError(r: { status: number; json: any }, status: number, re?: RegExp) {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.deepEqual(Object.keys(r.json).sort(), ['code', 'message']);
  assert.equal(r.json.code, status);
  if (re) assert.match(r.json.message, re);
}
