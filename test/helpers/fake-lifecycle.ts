// A map-based, in-memory fake of the lifecycle service, for tests of the HTTP layer and the CLI
// (the HTTP layer is what is under test, not the lifecycle).
import { NestboxError } from '../../src/core/errors.ts';
import { newSandboxId } from '../../src/core/ids.ts';
import type { SandboxState } from '../../src/core/states.ts';
import type {
  CreateSandboxParams, LifecycleApi, ListSandboxesParams, SandboxMetrics, SandboxView,
} from '../../src/control-plane/lifecycle-types.ts';

export class FakeLifecycle implements LifecycleApi {
  sandboxes = new Map<string, SandboxView>();
  calls: Array<{ op: string; args: unknown[] }> = [];
  /** The next call of any operation throws this (once). */
  failNext: Error | null = null;
  clock = Date.parse('2026-01-01T00:00:00Z');

  private hit(op: string, ...args: unknown[]) {
    this.calls.push({ op, args });
    const e = this.failNext;
    this.failNext = null;
    if (e) throw e;
  }

  private find(teamId: string, id: string): SandboxView {
    const v = this.sandboxes.get(id);
    if (!v || v.teamId !== teamId || v.state === 'killed' || v.state === 'failed') {
      throw new NestboxError('not_found', `sandbox ${id} not found`);
    }
    return v;
  }

  seed(over: Partial<SandboxView> & { teamId: string }): SandboxView {
    this.clock += 1000;
    const v: SandboxView = {
      sandboxId: newSandboxId(),
      templateId: 'base',
      state: 'running',
      nodeId: 'node-1',
      envdAccessToken: 'tok-' + Math.random().toString(36).slice(2),
      metadata: {},
      cpuCount: 2,
      memoryMB: 512,
      diskSizeMB: 1024,
      startedAt: new Date(this.clock),
      endAt: new Date(this.clock + 300_000),
      autoPause: false,
      autoPauseMemory: true,
      autoResume: false,
      allowInternetAccess: true,
      secure: true,
      generation: 1,
      ...over,
    };
    this.sandboxes.set(v.sandboxId, v);
    return v;
  }

  async create(p: CreateSandboxParams) {
    this.hit('create', p);
    return this.seed({
      teamId: p.teamId, templateId: p.templateId, metadata: p.metadata, autoPause: p.autoPause,
      autoPauseMemory: p.autoPauseMemory, autoResume: p.autoResume, allowInternetAccess: p.allowInternetAccess,
      secure: p.secure, endAt: new Date(Date.now() + p.timeoutMs),
    });
  }
  async get(teamId: string, id: string) {
    this.hit('get', teamId, id);
    return this.find(teamId, id);
  }
  async list(teamId: string, p: ListSandboxesParams) {
    this.hit('list', teamId, p);
    const states = p.states ?? (['starting', 'running', 'pausing', 'paused', 'resuming', 'killing'] as SandboxState[]);
    const all = [...this.sandboxes.values()]
      .filter((v) => v.teamId === teamId && states.includes(v.state))
      .filter((v) => Object.entries(p.metadata ?? {}).every(([k, val]) => v.metadata[k] === val))
      .sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime());
    let offset = 0;
    if (p.nextToken !== undefined) {
      if (!/^o\d+$/.test(p.nextToken)) throw new NestboxError('invalid', 'bad nextToken');
      offset = Number(p.nextToken.slice(1));
    }
    const page = all.slice(offset, offset + p.limit);
    const next = offset + p.limit < all.length ? `o${offset + p.limit}` : null;
    const totalRunning = [...this.sandboxes.values()].filter((v) => v.teamId === teamId && v.state === 'running').length;
    return { sandboxes: page, nextToken: next, totalRunning };
  }
  async kill(teamId: string, id: string) {
    this.hit('kill', teamId, id);
    this.find(teamId, id).state = 'killed';
  }
  async pause(teamId: string, id: string, opts: { memory: boolean }) {
    this.hit('pause', teamId, id, opts);
    const v = this.find(teamId, id);
    if (v.state !== 'running') throw new NestboxError('conflict', `sandbox ${id} is ${v.state}`);
    v.state = 'paused';
    v.endAt = null;
  }
  async connect(teamId: string, id: string, timeoutMs: number) {
    this.hit('connect', teamId, id, timeoutMs);
    const v = this.find(teamId, id);
    if (v.state === 'killing') throw new NestboxError('conflict', 'being killed');
    const resumed = v.state === 'paused';
    v.state = 'running';
    v.endAt = new Date(Date.now() + timeoutMs);
    return { sandbox: v, resumed };
  }
  async resume(teamId: string, id: string, timeoutMs: number, opts: { autoPause?: boolean } = {}) {
    this.hit('resume', teamId, id, timeoutMs, opts);
    const { autoPause } = opts;
    const v = this.find(teamId, id);
    if (v.state !== 'paused') throw new NestboxError('conflict', `sandbox ${id} is ${v.state}`);
    v.state = 'running';
    v.endAt = new Date(Date.now() + timeoutMs);
    if (autoPause !== undefined) v.autoPause = autoPause;
    return v;
  }
  async setTimeout(teamId: string, id: string, timeoutMs: number) {
    this.hit('setTimeout', teamId, id, timeoutMs);
    const v = this.find(teamId, id);
    if (v.state !== 'running') throw new NestboxError('conflict', `sandbox ${id} is ${v.state}`);
    v.endAt = new Date(Date.now() + timeoutMs);
  }
  async refresh(teamId: string, id: string, durationMs: number) {
    this.hit('refresh', teamId, id, durationMs);
    this.find(teamId, id);
  }
  async metrics(teamId: string, id: string): Promise<SandboxMetrics[]> {
    this.hit('metrics', teamId, id);
    this.find(teamId, id);
    const m = (t: string): SandboxMetrics => ({
      timestamp: new Date(t), cpuCount: 2, cpuUsedPct: 12.5, memUsed: 100 * 2 ** 20, memTotal: 512 * 2 ** 20,
      diskUsed: 10 * 2 ** 20, diskTotal: 1024 * 2 ** 20,
    });
    return [m('2026-01-01T00:00:00Z'), m('2026-01-01T00:00:05Z')];
  }

  lastCall(op: string) {
    return [...this.calls].reverse().find((c) => c.op === op);
  }
}
