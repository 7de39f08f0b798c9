import { Type, type Static } from 'typebox';
import { DEFAULT_PIDS_LIMIT } from '../core/runtime-state.ts';

// The node API's requests: every field the control plane sends is bounded here; the agent
// validates with these schemas, the control plane builds its requests as their types.
export const SandboxIdParam = Type.Object({ id: Type.String({ pattern: '^[a-z0-9]{20}$' }) });
/** A key of the snapshot store: a paused sandbox's id, or a named snapshot's (snap-…). */
export const SnapshotKeyParam = Type.Object({ id: Type.String({ pattern: '^(snap-)?[a-z0-9]{20}$' }) });
export const LiveSnapshotBody = Type.Object(
  { snapshotId: Type.String({ pattern: '^snap-[a-z0-9]{20}$' }) },
  { additionalProperties: false },
);
export type LiveSnapshotBody = Static<typeof LiveSnapshotBody>;
export const PidParam = Type.Object({
  id: Type.String({ pattern: '^[a-z0-9]{20}$' }),
  pid: Type.Integer({ minimum: 1, maximum: 4194304 }),
});

const StringMap = (maxEntries: number) =>
  Type.Record(Type.String({ minLength: 1, maxLength: 256 }), Type.String({ maxLength: 8192 }), {
    maxProperties: maxEntries,
  });

export const CreateSandboxBody = Type.Object(
  {
    sandboxId: Type.String({ pattern: '^[a-z0-9]{20}$' }),
    template: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }),
    cpuCount: Type.Number({ minimum: 0.1, maximum: 64, default: 1 }),
    memoryMB: Type.Integer({ minimum: 32, maximum: 262144, default: 512 }),
    pidsLimit: Type.Integer({ minimum: 16, maximum: 65536, default: DEFAULT_PIDS_LIMIT }),
    diskMB: Type.Integer({ minimum: 32, maximum: 1024 * 1024, default: 2048 }),
    envVars: StringMap(256),
    metadata: StringMap(64),
    allowInternetAccess: Type.Boolean({ default: true }),
    /** Start from this named snapshot's memory and files instead of the template's files. */
    fromSnapshot: Type.Optional(Type.String({ pattern: '^snap-[a-z0-9]{20}$' })),
  },
  { additionalProperties: false },
);
export type CreateSandboxBody = Static<typeof CreateSandboxBody>;
/** The create request as the control plane sends it (fields with a default may be left out). */
export type NodeCreateRequest = Omit<CreateSandboxBody, 'pidsLimit'> & Partial<Pick<CreateSandboxBody, 'pidsLimit'>>;

export const PauseBody = Type.Object({
  memory: Type.Boolean({ default: true }),
  /**
   * Before the dump, wait up to this long for the requests in progress on the sandbox (commands,
   * file calls) to end: a drain moves a sandbox under its clients' feet, and a command already
   * running when it pauses would otherwise lose its answer.
   */
  quiesceMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000 })),
}, { additionalProperties: false });
export type PauseBody = Static<typeof PauseBody>;
export const KillQuery = Type.Object({ deleteSnapshot: Type.Optional(Type.Boolean()) }, { additionalProperties: false });
export type KillQuery = Static<typeof KillQuery>;

const User = Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.-]+$' }));
const FilePath = Type.String({ minLength: 1, maxLength: 4096 });

export const StartProcessBody = Type.Object(
  {
    argv: Type.Array(Type.String({ maxLength: 131072 }), { minItems: 1, maxItems: 4096 }),
    env: Type.Optional(StringMap(256)),
    cwd: Type.Optional(FilePath),
    user: User,
    pty: Type.Optional(
      Type.Union([
        Type.Object({ cols: Type.Integer({ minimum: 1, maximum: 1000 }), rows: Type.Integer({ minimum: 1, maximum: 1000 }) }),
        Type.Null(),
      ]),
    ),
    stdin: Type.Optional(Type.Boolean()),
    tag: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: false },
);
export type StartProcessBody = Static<typeof StartProcessBody>;

export const InputBody = Type.Object({ data: Type.String({ maxLength: 1398104, contentEncoding: 'base64' }) }, { additionalProperties: false });
export const SignalBody = Type.Object({ signal: Type.Integer({ minimum: 1, maximum: 64 }) }, { additionalProperties: false });
export const ResizeBody = Type.Object(
  { cols: Type.Integer({ minimum: 1, maximum: 1000 }), rows: Type.Integer({ minimum: 1, maximum: 1000 }) },
  { additionalProperties: false },
);

export const FileQuery = Type.Object({ path: FilePath, user: User }, { additionalProperties: false });
export const ListDirQuery = Type.Object(
  { path: FilePath, user: User, depth: Type.Integer({ minimum: 1, maximum: 64, default: 1 }) },
  { additionalProperties: false },
);
export const WatchQuery = Type.Object(
  { path: FilePath, user: User, recursive: Type.Boolean({ default: false }) },
  { additionalProperties: false },
);
export const MoveBody = Type.Object({ from: FilePath, to: FilePath, user: User }, { additionalProperties: false });
export const PathBody = Type.Object({ path: FilePath, user: User }, { additionalProperties: false });

// --- templates ----------------------------------------------------------------------------------
export const TemplateNameParam = Type.Object({ name: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }) });
/** POST /v1/templates: the image archive is the body (streamed); name and owner ride in the query. */
export const TemplateImportQuery = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }),
    /** The team importing it, kept in template.json (the control plane decides who sees it). */
    owner: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    /** The image's entrypoint + cmd become the template's start command (else they are only recorded). */
    start: Type.Optional(Type.Boolean()),
    /** With start: the command whose success says the started process is ready (a warm capture follows). */
    readyCmd: Type.Optional(Type.String({ minLength: 1, maxLength: 65536 })),
  },
  { additionalProperties: false },
);
export type TemplateImportQuery = Static<typeof TemplateImportQuery>;
