// The node API's paths, defined once: the agent registers these patterns, the control plane
// (node client, sandbox proxy) fills them with nodePath. A path cannot differ between the sides.

/** Route patterns (Fastify syntax: `:name` is a parameter). */
export const NODE_ROUTES = {
  health: '/v1/health',
  /** The node's own status: drain state and plan. */
  node: '/v1/node',
  /** POST creates; GET is the node's inventory. */
  sandboxes: '/v1/sandboxes',
  /** GET: the record and container state; DELETE kills. */
  sandbox: '/v1/sandboxes/:id',
  pause: '/v1/sandboxes/:id/pause',
  resume: '/v1/sandboxes/:id/resume',
  metrics: '/v1/sandboxes/:id/metrics',
  lastStop: '/v1/sandboxes/:id/last-stop',
  /** POST: a live snapshot of a running sandbox (it keeps running), stored under a named snapshot id. */
  sandboxSnapshots: '/v1/sandboxes/:id/snapshots',
  snapshots: '/v1/snapshots',
  /** A snapshot by its store key: a paused sandbox's id or a named snapshot's id. */
  snapshot: '/v1/snapshots/:id',

  processes: '/v1/sandboxes/:id/processes',
  processStream: '/v1/sandboxes/:id/processes/:pid/stream',
  processInput: '/v1/sandboxes/:id/processes/:pid/input',
  processCloseStdin: '/v1/sandboxes/:id/processes/:pid/close-stdin',
  processSignal: '/v1/sandboxes/:id/processes/:pid/signal',
  processResize: '/v1/sandboxes/:id/processes/:pid/resize',

  files: '/v1/sandboxes/:id/files',
  fsStat: '/v1/sandboxes/:id/fs/stat',
  fsList: '/v1/sandboxes/:id/fs/list',
  fsMkdir: '/v1/sandboxes/:id/fs/mkdir',
  fsMove: '/v1/sandboxes/:id/fs/move',
  fsRemove: '/v1/sandboxes/:id/fs/remove',
  fsWatch: '/v1/sandboxes/:id/fs/watch',

  /** Port forwarding: the prefix; the request's own path and query follow it. */
  port: '/v1/sandboxes/:id/ports/:port',
  /** The envd protocol of the sandbox: the prefix; envd's own paths follow it. */
  envd: '/v1/sandboxes/:id/envd',

  templates: '/v1/templates',
  template: '/v1/templates/:name',
} as const;

export type NodeRoute = (typeof NODE_ROUTES)[keyof typeof NODE_ROUTES];

/** The parameter names of a route pattern: '/v1/sandboxes/:id/processes/:pid/input' → 'id' | 'pid'. */
type RouteParams<P extends string> = P extends `${string}:${infer Name}/${infer Rest}`
  ? Name | RouteParams<`/${Rest}`>
  : P extends `${string}:${infer Name}`
    ? Name
    : never;

type Query = Record<string, string | number | boolean | undefined>;

/**
 * The path of a route (a NODE_ROUTES pattern, or another part of the contract's) with its
 * parameters filled in (each URI-encoded), and an optional query (undefined values left out).
 */
export function nodePath<P extends string>(route: P, params: Record<RouteParams<P>, string | number>, query?: Query): string {
  const path = route.replace(/:([A-Za-z]+)/g, (_, name: string) => encodeURIComponent(String((params as Record<string, string | number>)[name])));
  const q = Object.entries(query ?? {}).filter((e): e is [string, string | number | boolean] => e[1] !== undefined);
  return q.length ? `${path}?${new URLSearchParams(q.map(([k, v]) => [k, String(v)]))}` : path;
}

// The port route as a regular expression: each parameter one path segment, then the rest.
const PORT_URL = new RegExp(`^${NODE_ROUTES.port.replace(/:[A-Za-z]+/g, '([^/?#]+)')}(.*)$`, 's');

/**
 * A port-forward request URL taken apart (upgrades arrive outside the router): the sandbox id
 * and port as sent (unchecked), and the rest, the upstream path ('/' when empty).
 */
export function parsePortUrl(url: string): { sandboxId: string; port: string; rest: string } | null {
  const m = PORT_URL.exec(url);
  if (!m) return null;
  let rest = m[3] ?? '';
  if (rest === '' || rest.startsWith('?')) rest = '/' + rest;
  return { sandboxId: m[1]!, port: m[2]!, rest };
}

/**
 * Set by the agent on its "sandbox not found" answer to a request for a sandbox (envd, ports):
 * this node does not hold the sandbox, or is pausing it and takes no more requests for it. The
 * request was not acted on, so the proxy may send it again to wherever the sandbox is now.
 */
export const NOT_HERE_HEADER = 'nestbox-sandbox-not-here';
