import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ApiError } from './errors.ts';

/** Resolves an API key to its team; null for an unknown key. */
export type Authenticate = (apiKey: string) => Promise<{ teamId: string } | null>;

const MAX_KEY_LENGTH = 512;
const teams = new WeakMap<FastifyRequest, string>();

/** Routes registered with `config: { public: true }` skip authentication. */
export interface RouteAuthConfig {
  public?: boolean;
}

/**
 * Authenticates every matched route by its `X-API-Key` header (E2B's scheme). Unknown routes
 * are left to the not-found handler, so a probe of a wrong path gets 404 rather than 401.
 */
export function installAuth(app: FastifyInstance, authenticate: Authenticate) {
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.url === undefined) return; // not found
    if ((req.routeOptions.config as RouteAuthConfig | undefined)?.public) return;
    const header = req.headers['x-api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (!key) throw new ApiError(401, 'missing API key: send it in the X-API-Key header');
    const team = key.length <= MAX_KEY_LENGTH ? await authenticate(key) : null;
    if (!team) throw new ApiError(401, 'invalid API key');
    teams.set(req, team.teamId);
  });
}

/** The authenticated team of a request (only on authenticated routes). */
export function teamOf(req: FastifyRequest): string {
  const team = teams.get(req);
  if (team === undefined) throw new Error('teamOf() called on an unauthenticated request');
  return team;
}
