import type { Readable } from 'node:stream';
import { NestboxError, type ErrorCode } from '../core/errors.ts';
import { ndjsonLines } from '../http/ndjson.ts';
import { readNodeFailure } from '../node-api/errors.ts';
import { NODE_ROUTES as R, nodePath } from '../node-api/routes.ts';
import { TEMPLATE_BUILD_ROUTES as B, type CaptureBody, type SandboxBuildFileBody } from '../node-api/template-builds.ts';
import type { LiveSnapshotBody, NodeCreateRequest, PauseBody, TemplateImportQuery } from '../node-api/schemas.ts';
import type {
  NodeInventory, NodeMetrics, NodeSandboxDetail, NodeSandboxRecord, NodeSnapshotRecord, NodeStatus, NodeStop, NodeTemplate,
  TemplateImportEvent,
} from '../node-api/wire.ts';

/**
 * A failed node call. `uncertain` means the call may or may not have taken effect (timeout,
 * connection lost): the caller must not assume either outcome.
 */
export class NodeCallError extends NestboxError {
  /** The call may have taken effect (its answer was lost); retrying may repeat it. */
  readonly uncertain: boolean;

  constructor(code: ErrorCode, message: string, opts: { uncertain: boolean; retryable?: boolean }) {
    super(code, message, { retryable: opts.retryable });
    this.uncertain = opts.uncertain;
    this.name = 'NodeCallError';
  }
}

/** When the node started a container, by its own clock (ISO); null when it did not say. */
export interface NodeStart {
  startedAt: string | null;
}

/** What the control plane needs from a node agent. */
export interface NodeClient {
  readonly nodeId: string;
  create(req: NodeCreateRequest): Promise<NodeStart>;
  /** Idempotent: succeeds when nothing is left. */
  kill(sandboxId: string, opts?: { deleteSnapshot?: boolean }): Promise<NodeStop>;
  /** `quiesceMs`: the node first waits (up to that long) for requests in progress on the sandbox. */
  pause(sandboxId: string, opts: { memory: boolean; quiesceMs?: number }): Promise<NodeStop>;
  resume(sandboxId: string): Promise<NodeStart>;
  /** When the node last stopped the sandbox, from its journal (a lost answer's instant). */
  lastStop(sandboxId: string): Promise<NodeStop>;
  /** When a paused sandbox stopped, as its snapshot says (any node reads the shared store). */
  snapshotStop(sandboxId: string): Promise<NodeStop>;
  /** Deletes a snapshot by its store key (a paused sandbox's id or a named snapshot's id). */
  deleteSnapshot(key: string): Promise<void>;
  /** A live snapshot of a running sandbox (it keeps running), stored complete under `snapshotId`. */
  snapshot(sandboxId: string, snapshotId: string): Promise<void>;
  /** null when the node does not hold a running container for the sandbox. */
  containerRunning(sandboxId: string): Promise<boolean>;
  metrics(sandboxId: string): Promise<NodeMetrics>;
  inventory(): Promise<NodeInventory>;
  status(): Promise<NodeStatus>;
}

/** The node agent's internal HTTP API (src/node-api: its paths, requests and answers). */
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
      throw new NodeCallError('unavailable', `node ${this.nodeId} did not answer ${method} ${path}: ${(e as Error).message}`, { uncertain: !refused, retryable: true });
    }
    const text = await res.text().catch(() => '');
    if (res.ok) return text ? JSON.parse(text) : undefined;
    const f = readNodeFailure(res.status, text);
    throw new NodeCallError(f.code, `node ${this.nodeId}: ${f.message}`, { uncertain: f.uncertain, retryable: f.retryable });
  }

  async create(req: NodeCreateRequest): Promise<NodeStart> {
    const record = (await this.call('POST', nodePath(R.sandboxes, {}), { ...req })) as NodeSandboxRecord;
    return { startedAt: instant(record, 'startedAt') };
  }
  async kill(sandboxId: string, opts: { deleteSnapshot?: boolean } = {}): Promise<NodeStop> {
    const path = nodePath(R.sandbox, { id: sandboxId }, { deleteSnapshot: opts.deleteSnapshot ? true : undefined });
    return { stoppedAt: instant((await this.call('DELETE', path)) as NodeStop | undefined, 'stoppedAt') };
  }
  async pause(sandboxId: string, opts: { memory: boolean; quiesceMs?: number }): Promise<NodeStop> {
    const body: PauseBody = { memory: opts.memory, ...(opts.quiesceMs ? { quiesceMs: opts.quiesceMs } : {}) };
    const snapshot = (await this.call('POST', nodePath(R.pause, { id: sandboxId }), body)) as NodeSnapshotRecord;
    return { stoppedAt: instant(snapshot, 'stoppedAt') };
  }
  async lastStop(sandboxId: string): Promise<NodeStop> {
    return { stoppedAt: instant((await this.call('GET', nodePath(R.lastStop, { id: sandboxId }))) as NodeStop, 'stoppedAt') };
  }
  async snapshotStop(sandboxId: string): Promise<NodeStop> {
    return { stoppedAt: instant((await this.call('GET', nodePath(R.snapshot, { id: sandboxId }))) as NodeSnapshotRecord, 'stoppedAt') };
  }
  async resume(sandboxId: string): Promise<NodeStart> {
    const record = (await this.call('POST', nodePath(R.resume, { id: sandboxId }))) as NodeSandboxRecord;
    return { startedAt: instant(record, 'startedAt') };
  }
  async deleteSnapshot(key: string) {
    await this.call('DELETE', nodePath(R.snapshot, { id: key }));
  }
  async snapshot(sandboxId: string, snapshotId: string) {
    const body: LiveSnapshotBody = { snapshotId };
    await this.call('POST', nodePath(R.sandboxSnapshots, { id: sandboxId }), body);
  }
  async containerRunning(sandboxId: string) {
    try {
      const s = (await this.call('GET', nodePath(R.sandbox, { id: sandboxId }))) as NodeSandboxDetail;
      return s.state === 'running';
    } catch (e) {
      if (e instanceof NodeCallError && e.code === 'not_found') return false;
      throw e;
    }
  }
  async metrics(sandboxId: string) {
    return (await this.call('GET', nodePath(R.metrics, { id: sandboxId }))) as NodeMetrics;
  }
  async inventory() {
    return (await this.call('GET', nodePath(R.sandboxes, {}))) as NodeInventory;
  }
  async status() {
    return (await this.call('GET', nodePath(R.node, {}))) as NodeStatus;
  }

  // --- templates (not part of NodeClient: only nodes reached over HTTP import images) --------
  async listTemplates() {
    return ((await this.call('GET', nodePath(R.templates, {}))) as { templates: NodeTemplate[] }).templates;
  }
  async getTemplate(name: string) {
    return (await this.call('GET', nodePath(R.template, { name }))) as NodeTemplate;
  }
  async deleteTemplate(name: string) {
    await this.call('DELETE', nodePath(R.template, { name }));
  }

  /**
   * Streams an image archive to the node, which imports it as template `name`; progress lines
   * go to `onEvent`. No overall timeout: a large image takes as long as it takes.
   */
  async importTemplate(
    name: string,
    archive: Readable,
    opts: { owner?: string; onEvent?: (e: TemplateImportEvent) => void; start?: { readyCmd: string | null } } = {},
  ): Promise<NodeTemplate> {
    const query: TemplateImportQuery = {
      name, ...(opts.owner ? { owner: opts.owner } : {}),
      ...(opts.start ? { start: true, ...(opts.start.readyCmd ? { readyCmd: opts.start.readyCmd } : {}) } : {}),
    };
    let res: Response;
    try {
      res = await fetch(this.baseUrl + nodePath(R.templates, {}, query), {
        method: 'POST',
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/octet-stream' },
        body: archive as unknown as BodyInit,
        duplex: 'half',
      } as RequestInit);
    } catch (e) {
      throw new NodeCallError('unavailable', `node ${this.nodeId} did not take the archive: ${(e as Error).message}`, { uncertain: false, retryable: true });
    }
    if (!res.ok || !res.body) {
      // Refused before the import began: nothing happened, whatever the status.
      const f = readNodeFailure(res.status, await res.text().catch(() => ''));
      throw new NodeCallError(f.code, `node ${this.nodeId}: ${f.message}`, { uncertain: false });
    }
    for await (const line of ndjsonLines(res.body as unknown as AsyncIterable<Uint8Array>)) {
      const ev = line as TemplateImportEvent;
      if (ev.type === 'done') return ev.template as NodeTemplate;
      if (ev.type === 'error') {
        const code = (typeof ev.code === 'string' ? ev.code : 'internal') as ErrorCode;
        throw new NodeCallError(code, String(ev.message ?? 'import failed'), { uncertain: false });
      }
      opts.onEvent?.(ev);
    }
    throw new NodeCallError('internal', `node ${this.nodeId} ended the import of "${name}" without an outcome`, { uncertain: true });
  }

  // --- template builds (src/node-api/template-builds.ts) -------------------------------------
  async buildFilePresent(owner: string, hash: string): Promise<boolean> {
    return ((await this.call('GET', nodePath(B.buildFile, { owner, hash }))) as { present: boolean }).present;
  }
  /** Streams a build's uploaded tarball to the node, which keeps it by team and hash. */
  async putBuildFile(owner: string, hash: string, body: Readable): Promise<void> {
    const res = await this.stream('PUT', nodePath(B.buildFile, { owner, hash }), body, 'application/octet-stream');
    const text = await res.text().catch(() => '');
    if (res.ok) return;
    const f = readNodeFailure(res.status, text);
    throw new NodeCallError(f.code, `node ${this.nodeId}: ${f.message}`, { uncertain: false });
  }
  async copyBuildFileInto(sandboxId: string, file: SandboxBuildFileBody): Promise<void> {
    await this.call('POST', nodePath(B.sandboxBuildFile, { id: sandboxId }), file);
  }
  async captureTemplate(sandboxId: string, body: CaptureBody): Promise<NodeTemplate> {
    return (await this.call('POST', nodePath(B.capture, { id: sandboxId }), body)) as NodeTemplate;
  }

  /**
   * Runs a process in a sandbox to its end, its output to `onOutput` as it comes. No overall
   * timeout: `signal` ends the wait (the process is left to its sandbox's kill).
   */
  async runProcess(
    sandboxId: string,
    req: { argv: string[]; env?: Record<string, string>; cwd?: string; user?: string },
    onOutput: (channel: 'stdout' | 'stderr', data: Buffer) => void,
    signal?: AbortSignal,
  ): Promise<{ exitCode: number | null; signal: number | null }> {
    const res = await this.stream('POST', nodePath(R.processes, { id: sandboxId }), JSON.stringify(req), 'application/json', signal);
    if (!res.ok || !res.body) {
      const f = readNodeFailure(res.status, await res.text().catch(() => ''));
      throw new NodeCallError(f.code, `node ${this.nodeId}: ${f.message}`, { uncertain: false });
    }
    for await (const line of ndjsonLines(res.body as unknown as AsyncIterable<Uint8Array>)) {
      const m = line as { type: string; channel?: string; data?: string; exitCode?: number | null; signal?: number | null; message?: string };
      if (m.type === 'data' && (m.channel === 'stdout' || m.channel === 'stderr')) onOutput(m.channel, Buffer.from(m.data ?? '', 'base64'));
      else if (m.type === 'exit') return { exitCode: m.exitCode ?? null, signal: m.signal ?? null };
      else if (m.type === 'error') throw new NodeCallError('internal', `node ${this.nodeId}: ${m.message ?? 'the process stream failed'}`, { uncertain: false });
    }
    throw new NodeCallError('unavailable', `node ${this.nodeId} ended the process stream before the exit`, { uncertain: true, retryable: true });
  }

  /** A request whose body (or answer) is a stream: no overall timeout. */
  private async stream(method: string, path: string, body: Readable | string, contentType: string, signal?: AbortSignal): Promise<Response> {
    try {
      return await fetch(this.baseUrl + path, {
        method, headers: { authorization: `Bearer ${this.token}`, 'content-type': contentType }, body: body as unknown as BodyInit, duplex: 'half', signal,
      } as RequestInit);
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new NodeCallError('unavailable', `node ${this.nodeId} did not answer ${method} ${path}: ${(e as Error).message}`, { uncertain: true, retryable: true });
    }
  }
}

/** An instant a node reported (ISO time); null when absent or not a time. */
function instant<K extends string>(body: Partial<Record<K, unknown>> | undefined, key: K): string | null {
  const v = body?.[key];
  return typeof v === 'string' && !Number.isNaN(Date.parse(v)) ? v : null;
}
