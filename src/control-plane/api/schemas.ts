import { Type, type Static, type TSchema } from 'typebox';

// The public REST API's request and response shapes, wire-compatible with E2B's OpenAPI spec
// (field names, defaults and bounds). Unknown request fields are ignored, as E2B's server does,
// so that newer SDKs keep working; every known field is bounded.

export const MAX_TIMEOUT_S = 86_400; // 24 h, E2B's largest team limit
const MAX_REFRESH_S = 3_600;

export const ErrorBody = Type.Object(
  { code: Type.Integer({ description: 'HTTP status code' }), message: Type.String() },
  { description: 'An error' },
);

/** Path parameter. Kept loose on purpose: a malformed id is "not found" (404), as on E2B. */
export const SandboxIdParams = Type.Object({
  sandboxID: Type.String({ minLength: 1, maxLength: 64, description: 'Sandbox id: 20 lower-case alphanumerics' }),
});
export type SandboxIdParams = Static<typeof SandboxIdParams>;

const StringMap = (maxEntries: number, maxValue: number, description: string) =>
  Type.Record(Type.String({ minLength: 1, maxLength: 256 }), Type.String({ maxLength: maxValue }), {
    maxProperties: maxEntries,
    description,
  });

const Timeout = (defaultSeconds: number) =>
  Type.Integer({ minimum: 0, maximum: MAX_TIMEOUT_S, default: defaultSeconds, description: 'Time to live in seconds' });

// Extras E2B accepts that Nestbox does not implement. Accepted loosely, so that requests which ask
// for nothing (null, {}, []) pass; requests which do ask get a 501 naming the feature.
const Loose = (description: string) => Type.Unknown({ description });

const CreateFields = {
  templateID: Type.String({
    minLength: 1,
    maxLength: 128,
    pattern: '^[A-Za-z0-9][A-Za-z0-9._:/-]*$',
    description: 'Template name',
  }),
  metadata: Type.Optional(StringMap(64, 8192, 'Sandbox metadata')),
  envVars: Type.Optional(StringMap(256, 131_072, 'Environment variables')),
  autoPause: Type.Boolean({ default: false, description: 'Pause (rather than kill) the sandbox at its timeout' }),
  autoPauseMemory: Type.Optional(Type.Boolean({ description: 'Keep memory in the auto-pause snapshot (default true)' })),
  autoResume: Type.Optional(
    Type.Union([Type.Object({ enabled: Type.Boolean() }), Type.Boolean(), Type.Null()], {
      description: 'Resume a paused sandbox when traffic reaches it',
    }),
  ),
  allow_internet_access: Type.Boolean({ default: true, description: 'Allow outbound internet access' }),
  mcp: Type.Optional(Loose('MCP gateway configuration (not supported)')),
  network: Type.Optional(Loose('Egress rules (only denyOut ["0.0.0.0/0"] is supported)')),
  iam: Type.Optional(Loose('Workload identity tokens (not supported)')),
  volumeMounts: Type.Optional(Loose('Volume mounts (not supported)')),
};

/** POST /sandboxes (legacy). */
export const NewSandbox = Type.Object({
  ...CreateFields,
  timeout: Timeout(15),
  secure: Type.Boolean({ default: true, description: 'Require the envd access token' }),
});
export type NewSandbox = Static<typeof NewSandbox>;

/** POST /v2/sandboxes: always secure, default timeout 300 s. */
export const NewSandboxV2 = Type.Object({ ...CreateFields, timeout: Timeout(300) });
export type NewSandboxV2 = Static<typeof NewSandboxV2>;

const Memory = Type.Optional(Type.Boolean({ description: 'Restore memory (default true); false is not supported' }));

export const ConnectBody = Type.Object({ timeout: Type.Integer({ minimum: 0, maximum: MAX_TIMEOUT_S }), memory: Memory });
export type ConnectBody = Static<typeof ConnectBody>;
export const ConnectBodyV2 = Type.Object({ timeout: Timeout(300), memory: Memory });
export type ConnectBodyV2 = Static<typeof ConnectBodyV2>;

export const ResumeBody = Type.Object({
  timeout: Timeout(15),
  autoPause: Type.Optional(Type.Boolean()),
  memory: Memory,
});
export type ResumeBody = Static<typeof ResumeBody>;

export const TimeoutBody = Type.Object({ timeout: Type.Integer({ minimum: 0, maximum: MAX_TIMEOUT_S }) });
export type TimeoutBody = Static<typeof TimeoutBody>;

export const RefreshBody = Type.Object({
  duration: Type.Integer({ minimum: 0, maximum: MAX_REFRESH_S, default: 15, description: 'Seconds to keep alive' }),
});
export type RefreshBody = Static<typeof RefreshBody>;

export const PauseBody = Type.Object({
  memory: Type.Boolean({ default: true, description: 'Snapshot memory (false: filesystem only)' }),
});
export type PauseBody = Static<typeof PauseBody>;

const States = Type.Array(Type.String({ pattern: '^(running|paused)(,(running|paused))*$', maxLength: 64 }), {
  maxItems: 8,
  description: 'Comma-separated (or repeated) states: running, paused',
});

/** E2B's list filters beside state and metadata (names and meaning from its OpenAPI spec). */
const ListFilters = {
  order: Type.Union([Type.Literal('asc'), Type.Literal('desc')], {
    default: 'desc',
    description: 'Sort direction by sandbox start time; desc (newest first) by default',
  }),
  startedAfter: Type.Optional(
    Type.String({ format: 'date-time', description: 'Only sandboxes started at or after this time (RFC 3339)' }),
  ),
  template: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'A template ID or alias' })),
};

export const ListQuery = Type.Object({
  metadata: Type.Optional(
    Type.String({ maxLength: 16_384, description: 'URL-encoded key=value pairs, each key and value URI-encoded' }),
  ),
  state: Type.Optional(States),
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 100 }),
  nextToken: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
  ...ListFilters,
});
export type ListQuery = Static<typeof ListQuery>;

/** E2B defines only `metadata` here; the other filters of the v2 list are accepted as well. */
export const LegacyListQuery = Type.Object({
  metadata: Type.Optional(Type.String({ maxLength: 16_384 })),
  ...ListFilters,
});
export type LegacyListQuery = Static<typeof LegacyListQuery>;

export const MetricsQuery = Type.Object({
  start: Type.Optional(Type.Integer({ minimum: 0, description: 'Unix seconds' })),
  end: Type.Optional(Type.Integer({ minimum: 0, description: 'Unix seconds' })),
});
export type MetricsQuery = Static<typeof MetricsQuery>;

// --- responses ----------------------------------------------------------------------------------

const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
const DateTime = Type.String({ format: 'date-time' });

export const SandboxCreated = Type.Object(
  {
    sandboxID: Type.String(),
    templateID: Type.String(),
    alias: Type.Optional(Type.String()),
    clientID: Type.String({ description: 'Deprecated; always "6532622b"' }),
    envdVersion: Type.String(),
    envdAccessToken: Type.Optional(Type.String()),
    trafficAccessToken: Nullable(Type.String()),
    domain: Nullable(Type.String()),
  },
);
export type SandboxCreated = Static<typeof SandboxCreated>;

const ListedFields = {
  sandboxID: Type.String(),
  templateID: Type.String(),
  alias: Type.Optional(Type.String()),
  clientID: Type.String(),
  startedAt: DateTime,
  endAt: DateTime,
  cpuCount: Type.Number(),
  memoryMB: Type.Integer(),
  diskSizeMB: Type.Integer(),
  metadata: Type.Record(Type.String(), Type.String()),
  state: Type.Union([Type.Literal('running'), Type.Literal('paused')]),
  envdVersion: Type.String(),
};

export const ListedSandbox = Type.Object(ListedFields);
export type ListedSandbox = Static<typeof ListedSandbox>;

export const SandboxDetail = Type.Object(
  {
    ...ListedFields,
    envdAccessToken: Type.Optional(Type.String()),
    domain: Nullable(Type.String()),
    allowInternetAccess: Nullable(Type.Boolean()),
    lifecycle: Type.Object({
      autoResume: Type.Boolean(),
      onTimeout: Type.Union([Type.Literal('kill'), Type.Literal('pause')]),
    }),
    nodeId: Nullable(Type.String({ description: 'Nestbox: the node that runs it (or last ran it, when paused)' })),
  },
);
export type SandboxDetail = Static<typeof SandboxDetail>;

export const SandboxMetric = Type.Object(
  {
    timestamp: DateTime,
    timestampUnix: Type.Integer(),
    cpuCount: Type.Number(),
    cpuUsedPct: Type.Number(),
    memUsed: Type.Integer(),
    memTotal: Type.Integer(),
    memCache: Type.Integer(),
    diskUsed: Type.Integer(),
    diskTotal: Type.Integer(),
  },
);
export type SandboxMetric = Static<typeof SandboxMetric>;

export const Health = Type.Object({ status: Type.String() });
