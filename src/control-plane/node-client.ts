import { NestboxError, type ErrorCode } from '../core/errors.ts';

export interface NodeCreateRequest {
  sandboxId: string;
  template: string;
  cpuCount: number;
  memoryMB: number;
  /** The sandbox's disk: everything it writes, capped at this size. */
  diskMB: number;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  allowInternetAccess: boolean;
}

export interface NodeInventoryEntry {
  sandboxId: string;
  /** stopped: its init is dead (zombies included); broken: remains without a container. */
  state: 'running' | 'stopped' | 'creating' | 'broken';
  /** When the node last started it, ISO time. */
  startedAt?: string | null;
}

/** Everything a node holds, as the reconciler needs it. */
export interface NodeInventory {
  sandboxes: NodeInventoryEntry[];
  /** Sandboxes with a complete snapshot in the (shared) snapshot store. */
  snapshots: string[];
  /** Sandboxes an operation is in progress on: their entries prove nothing this round. */
  busy: string[];
}

export interface NodeStats {
  cpuNs: number;
  memoryBytes: number;
  memoryLimitBytes: number;
  pids: number;
}

/**
 * A failed node call. `uncertain` means the call may or may not have taken effect (timeout,
 * connection lost): the caller must not assume either outcome.
 */
export class NodeCallError extends NestboxError {
  constructor(code: ErrorCode, message: string, readonly uncertain: boolean, retryable = false) {
    super(code, message, retryable);
    this.name = 'NodeCallError';
  }
}

/** A node's own word on whether it takes new sandboxes, and its drain plan once draining. */
export interface NodeStatus {
  draining: boolean;
  drain: { policy: 'pause' | 'wait'; deadline: string } | null;
}

/** What the control plane needs from a node agent. */
export interface NodeClient {
  readonly nodeId: string;
  create(req: NodeCreateRequest): Promise<void>;
  /** Idempotent: succeeds when nothing is left. */
  kill(sandboxId: string, opts?: { deleteSnapshot?: boolean }): Promise<void>;
  pause(sandboxId: string, memory: boolean): Promise<void>;
  resume(sandboxId: string): Promise<void>;
  deleteSnapshot(sandboxId: string): Promise<void>;
  /** null when the node does not hold a running container for the sandbox. */
  containerRunning(sandboxId: string): Promise<boolean>;
  metrics(sandboxId: string): Promise<NodeStats>;
  inventory(): Promise<NodeInventory>;
  status(): Promise<NodeStatus>;
}

const CODES: Record<number, ErrorCode> = { 400: 'invalid', 404: 'not_found', 409: 'conflict', 429: 'limit', 503: 'unavailable' };

/** The node agent's internal HTTP API (src/agent/server.ts). */
export class HttpNodeClient implements NodeClient {
  constructor(
    readonly nodeId: string,
    private readonly baseUrl: string,
    private readonly token: string,
    private readonly timeoutMs = 120_000,
  ) {}

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(this.baseUrl + path, {
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (e) {
      // A refused connection never reached the node; anything else may have: outcome unknown.
      const refused = (e as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
      throw new NodeCallError('unavailable', `node ${this.nodeId} did not answer ${method} ${path}: ${(e as Error).message}`, !refused, true);
    }
    const text = await res.text().catch(() => '');
    if (res.ok) return text ? JSON.parse(text) : undefined;
    let message = text;
    let retryable = false;
    try {
      const parsed = JSON.parse(text) as { message?: string; retryable?: boolean };
      message = parsed.message ?? text;
      retryable = parsed.retryable === true;
    } catch {
      /* not JSON */
    }
    const code = CODES[res.status] ?? 'internal';
    throw new NodeCallError(code, `node ${this.nodeId}: ${message}`, res.status >= 500 && res.status !== 503, retryable || res.status === 503);
  }

  async create(req: NodeCreateRequest) {
    await this.call('POST', '/v1/sandboxes', { ...req });
  }
  async kill(sandboxId: string, opts: { deleteSnapshot?: boolean } = {}) {
    await this.call('DELETE', `/v1/sandboxes/${sandboxId}${opts.deleteSnapshot ? '?deleteSnapshot=true' : ''}`);
  }
  async pause(sandboxId: string, memory: boolean) {
    await this.call('POST', `/v1/sandboxes/${sandboxId}/pause`, { memory });
  }
  async resume(sandboxId: string) {
    await this.call('POST', `/v1/sandboxes/${sandboxId}/resume`);
  }
  async deleteSnapshot(sandboxId: string) {
    await this.call('DELETE', `/v1/snapshots/${sandboxId}`);
  }
  async containerRunning(sandboxId: string) {
    try {
      const s = (await this.call('GET', `/v1/sandboxes/${sandboxId}`)) as { state: string };
      return s.state === 'running';
    } catch (e) {
      if (e instanceof NodeCallError && e.code === 'not_found') return false;
      throw e;
    }
  }
  async metrics(sandboxId: string) {
    return (await this.call('GET', `/v1/sandboxes/${sandboxId}/metrics`)) as NodeStats;
  }
  async inventory() {
    return (await this.call('GET', '/v1/sandboxes')) as NodeInventory;
  }
  async status() {
    return (await this.call('GET', '/v1/node')) as NodeStatus;
  }
}
