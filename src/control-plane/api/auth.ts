import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ADMIN_KEY_PREFIX } from '../../store/admin-keys.ts';
import { ApiError } from './errors.ts';

/** Who a key is: a team (its API keys, E2B's format) or the operator (an admin key). */
export type Principal = { kind: 'team'; teamId: string } | { kind: 'admin'; adminKeyId: string };

/** Resolves a key to its principal; null for an unknown or revoked key. */
export type Authenticate = (apiKey: string) => Promise<Principal | null>;

/**
 * What a route needs: nothing (`public`), an admin key (`admin`), or else a team's API key.
 * Admin routes live under ADMIN_PREFIX, and only there (checked when routes are added).
 */
export interface RouteAuthConfig {
  public?: boolean;
  admin?: boolean;
}

declare module 'fastify' {
  interface FastifyContextConfig extends RouteAuthConfig {}
}

export const ADMIN_PREFIX = '/nestbox/v1/admin/';
/** Operator routes: teams and admin keys, and the fleet's nodes (join and heartbeat excepted: they are public, with their own token). */
const ADMIN_PREFIXES = [ADMIN_PREFIX, '/nestbox/v1/nodes'];
export const isAdminPath = (url: string) => ADMIN_PREFIXES.some((p) => url.startsWith(p));
const MAX_KEY_LENGTH = 512;
const principals = new WeakMap<FastifyRequest, Principal>();

const NEEDS_ADMIN =
  'this route needs an admin key (nestbox_admin_…), not a team API key: use the admin key printed at the first start ' +
  '(kept in the control directory as admin-key)';
const NEEDS_TEAM =
  'this route needs a team API key (e2b_…), not an admin key: an admin key belongs to no team; create a key for a team ' +
  'with POST /nestbox/v1/admin/teams/{id}/keys (nestbox teams keys create <teamId>)';

/**
 * Authenticates every matched route by its `X-API-Key` header (E2B's scheme). Unknown routes
 * are left to the not-found handler, so a probe of a wrong path gets 404 rather than 401.
 * A valid key of the wrong kind for the route is 403, saying which kind the route needs.
 */
export function installAuth(app: FastifyInstance, authenticate: Authenticate) {
  app.addHook('onRoute', (route) => {
    const config = route.config as RouteAuthConfig | undefined;
    if (config?.public) return;
    if ((config?.admin === true) !== isAdminPath(route.url)) {
      throw new Error(`route ${route.method} ${route.url}: routes under ${ADMIN_PREFIXES.join(' or ')}, and only they, need config.admin`);
    }
  });
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.url === undefined) return; // not found
    const config = req.routeOptions.config as RouteAuthConfig | undefined;
    if (config?.public) return;
    const header = req.headers['x-api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (!key) throw new ApiError(401, 'missing API key: send it in the X-API-Key header');
    const principal = key.length <= MAX_KEY_LENGTH ? await authenticate(key) : null;
    if (!principal) throw new ApiError(401, key.startsWith(ADMIN_KEY_PREFIX) ? 'invalid admin key' : 'invalid API key');
    if (config?.admin && principal.kind !== 'admin') throw new ApiError(403, NEEDS_ADMIN);
    if (!config?.admin && principal.kind !== 'team') throw new ApiError(403, NEEDS_TEAM);
    principals.set(req, principal);
  });
}

/** The authenticated team of a request (only on team routes). */
export function teamOf(req: FastifyRequest): string {
  const p = principals.get(req);
  if (p?.kind !== 'team') throw new Error('teamOf() called on a request without a team key');
  return p.teamId;
}

/** The admin key of a request (only on admin routes). */
export function adminOf(req: FastifyRequest): string {
  const p = principals.get(req);
  if (p?.kind !== 'admin') throw new Error('adminOf() called on a request without an admin key');
  return p.adminKeyId;
}
