import type { Readable } from 'node:stream';
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

/** A template as a node describes it (GET /v1/templates); `meta` is null for built-in ones. */
export interface NodeTemplate {
  name: string;
  builtin: boolean;
  meta: {
    source: 'docker' | 'oci';
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
  } | null;
}

/** A progress line of a template import (the node's NDJSON). */
export type TemplateImportEvent = { type: string; [k: string]: unknown };

/** What the control plane needs from a node agent. */
/** When the node started a container, by its own clock (ISO); null when it did not say. */
export interface NodeStart {
  startedAt: string | null;
}
/** When the node stopped a container (a dump froze it, it was killed), by its own clock; null: it held none running. */
export interface NodeStop {
  stoppedAt: string | null;
}

export interface NodeClient {
  readonly nodeId: string;
  create(req: NodeCreateRequest): Promise<NodeStart>;
  /** Idempotent: succeeds when nothing is left. */
  kill(sandboxId: string, opts?: { deleteSnapshot?: boolean }): Promise<NodeStop>;
  pause(sandboxId: string, memory: boolean): Promise<NodeStop>;
  resume(sandboxId: string): Promise<NodeStart>;
  /** When the node last stopped the sandbox, from its journal (a lost answer's instant). */
  lastStop(sandboxId: string): Promise<NodeStop>;
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

  async create(req: NodeCreateRequest): Promise<NodeStart> {
    return { startedAt: instant((await this.call('POST', '/v1/sandboxes', { ...req })) as { startedAt?: unknown }, 'startedAt') };
  }
  async kill(sandboxId: string, opts: { deleteSnapshot?: boolean } = {}): Promise<NodeStop> {
    const r = await this.call('DELETE', `/v1/sandboxes/${sandboxId}${opts.deleteSnapshot ? '?deleteSnapshot=true' : ''}`);
    return { stoppedAt: instant(r as { stoppedAt?: unknown } | undefined, 'stoppedAt') };
  }
  async pause(sandboxId: string, memory: boolean): Promise<NodeStop> {
    return { stoppedAt: instant((await this.call('POST', `/v1/sandboxes/${sandboxId}/pause`, { memory })) as { stoppedAt?: unknown }, 'stoppedAt') };
  }
  async lastStop(sandboxId: string): Promise<NodeStop> {
    return { stoppedAt: instant((await this.call('GET', `/v1/sandboxes/${sandboxId}/last-stop`)) as { stoppedAt?: unknown }, 'stoppedAt') };
  }
  async resume(sandboxId: string): Promise<NodeStart> {
    return { startedAt: instant((await this.call('POST', `/v1/sandboxes/${sandboxId}/resume`)) as { startedAt?: unknown }, 'startedAt') };
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

  // --- templates (not part of NodeClient: only nodes reached over HTTP import images) --------
  async listTemplates() {
    return ((await this.call('GET', '/v1/templates')) as { templates: NodeTemplate[] }).templates;
  }
  async getTemplate(name: string) {
    return (await this.call('GET', `/v1/templates/${encodeURIComponent(name)}`)) as NodeTemplate;
  }
  async deleteTemplate(name: string) {
    await this.call('DELETE', `/v1/templates/${encodeURIComponent(name)}`);
  }

  /**
   * Streams an image archive to the node, which imports it as template `name`; progress lines
   * go to `onEvent`. No overall timeout: a large image takes as long as it takes.
   */
  async importTemplate(name: string, archive: Readable, opts: { owner?: string; onEvent?: (e: TemplateImportEvent) => void } = {}): Promise<NodeTemplate> {
    const q = new URLSearchParams({ name, ...(opts.owner ? { owner: opts.owner } : {}) });
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}/v1/templates?${q}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/octet-stream' },
        body: archive as unknown as BodyInit,
        duplex: 'half',
      } as RequestInit);
    } catch (e) {
      throw new NodeCallError('unavailable', `node ${this.nodeId} did not take the archive: ${(e as Error).message}`, false, true);
    }
    if (!res.ok || !res.body) {
      const text = await res.text().catch(() => '');
      let message = text;
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? text;
      } catch {
        /* not JSON */
      }
      throw new NodeCallError(CODES[res.status] ?? 'internal', `node ${this.nodeId}: ${message}`, false);
    }
    let buffered = '';
    const decoder = new TextDecoder();
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffered += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (!line.trim()) continue;
        const ev = JSON.parse(line) as TemplateImportEvent;
        if (ev.type === 'done') return ev.template as NodeTemplate;
        if (ev.type === 'error') {
          const code = (typeof ev.code === 'string' ? ev.code : 'internal') as ErrorCode;
          throw new NodeCallError(code, String(ev.message ?? 'import failed'), false);
        }
        opts.onEvent?.(ev);
      }
    }
    throw new NodeCallError('internal', `node ${this.nodeId} ended the import of "${name}" without an outcome`, true);
  }
}

/** An instant a node reported (ISO time); null when absent or not a time. */
function instant(body: Record<string, unknown> | undefined, key: string): string | null {
  const v = body?.[key];
  return typeof v === 'string' && !Number.isNaN(Date.parse(v)) ? v : null;
}
