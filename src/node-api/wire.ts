// What the node API's answers carry, as the wire carries them (JSON: instants are ISO strings).
// The agent's handlers are typed with these, so the compiler checks that what the runtime hands
// out still fits; the control plane reads its answers as these. Request bodies: schemas.ts.

/** What a draining node asks of the control plane for its live sandboxes. */
export type DrainPolicy = 'pause' | 'wait';

/** GET /v1/node: the node's own word on whether it takes new sandboxes. */
export interface NodeStatus {
  nodeId: string;
  draining: boolean;
  /** Starts admitted before a drain began and not finished yet. */
  inFlightStarts: number;
  /** Once draining: what to do with the sandboxes still here, and until when (ISO). */
  drain: { policy: DrainPolicy; deadline: string } | null;
}

/** One sandbox of a node's inventory. */
export interface NodeInventoryEntry {
  sandboxId: string;
  /** stopped: the container exists but its init is dead (a zombie counts as dead); broken: no container. */
  state: 'running' | 'stopped' | 'creating' | 'broken';
  /** An operation on it is in progress on the node. */
  busy: boolean;
  /** When the node last started it (ISO). */
  startedAt: string | null;
  pid: number | null;
  address: string | null;
  template: string | null;
  metadata: Record<string, string>;
  createdAt: string | null;
}

/** GET /v1/sandboxes: everything a node holds, as the reconciler needs it. */
export interface NodeInventory {
  sandboxes: NodeInventoryEntry[];
  /** Sandboxes with a complete snapshot in the (shared) snapshot store. */
  snapshots: string[];
  /** Named snapshots (and forks' sources) complete in the store. */
  namedSnapshots?: string[];
  /** Sandboxes an operation is in progress on: their entries prove nothing this round. */
  busy: string[];
}

/** What a node keeps about a sandbox (answer of create and resume; part of a snapshot). */
export interface NodeSandboxRecord {
  sandboxId: string;
  template: string;
  resources: { cpuCount: number; memoryMB: number; pidsLimit: number; diskMB?: number };
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  allowInternetAccess: boolean;
  address: string;
  createdAt: string;
  /** When its container last started (create or restore) on the node. */
  startedAt?: string;
}

/** GET /v1/sandboxes/:id: the record and its container as the node sees it now. */
export interface NodeSandboxDetail extends NodeSandboxRecord {
  /** The container's status ('running', 'stopped', ...), or 'broken' when there is none. */
  state: string;
  pid: number | null;
}

/** A paused sandbox's snapshot (answer of pause; GET /v1/snapshots[/:id]). */
export interface NodeSnapshotRecord {
  sandbox: NodeSandboxRecord;
  /** CRIU images present; otherwise files only. */
  memory: boolean;
  pausedAt: string;
  /** When the dump froze the sandbox (it stopped computing): where its billing ends. */
  stoppedAt?: string;
  sizeBytes?: number;
}

/** When the node stopped a container, by its own clock (ISO); null: it held none running. Answer of kill and last-stop. */
export interface NodeStop {
  stoppedAt: string | null;
}

/** GET /v1/sandboxes/:id/metrics. */
export interface NodeMetrics {
  cpuNs: number;
  memoryBytes: number;
  memoryLimitBytes: number;
  pids: number;
  diskUsedBytes: number;
  diskTotalBytes: number;
}

/** A template as a node describes it (GET /v1/templates[/:name]); `meta` is null for built-in ones. */
export interface NodeTemplate {
  name: string;
  builtin: boolean;
  meta: {
    /** docker, oci: an imported image archive; build: a template build. */
    source: 'docker' | 'oci' | 'build';
    importedAt: string;
    layers: number;
    sizeBytes: number;
    configDigest: string | null;
    repoTags: string[];
    owner: string | null;
    env: Record<string, string>;
    workdir: string | null;
    user: string | null;
    entrypoint: string[] | null;
    cmd: string[] | null;
    /** A build's start command and ready check (bash); null or absent: none. */
    startCmd?: string | null;
    readyCmd?: string | null;
    /** A build's base template, and the build that made it. */
    fromTemplate?: string;
    buildId?: string;
  } | null;
}

/**
 * A line of a template import's NDJSON answer: progress lines while it runs, then `done` with
 * the template or `error` with its code and message.
 */
export type TemplateImportEvent = { type: string; [k: string]: unknown };

/** A line of a process stream's NDJSON answer (start and attach). */
export type ProcessStreamLine =
  | { type: 'start'; pid: number }
  | { type: 'data'; channel: 'stdout' | 'stderr' | 'pty'; data: string /* base64 */ }
  | { type: 'exit'; exitCode: number | null; signal: number | null }
  | { type: 'error'; message: string };

/** A line of a watch's NDJSON answer. */
export type WatchStreamLine = { type: 'watching' } | ({ type: 'event' } & Record<string, unknown>) | { type: 'error'; message: string };

/** An error answer: `code` is the HTTP status; `retryable` when trying again later may succeed. */
export interface NodeErrorBody {
  code: number;
  message: string;
  retryable?: boolean;
}
