import { readFile, readdir, stat, statfs, writeFile, rename } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  MEMBERSHIP_ROUTES, MEMBERSHIP_STATUS, TEMPLATE_NAME_PATTERN,
  type HeartbeatAnswer, type JoinBody, type Joined, type MembershipFailure, type NodeReport,
} from '../node-api/membership.ts';
import { nodePath } from '../node-api/routes.ts';
import type { RuntimeConfig } from '../runtime/config.ts';

const TEMPLATE_NAME = new RegExp(TEMPLATE_NAME_PATTERN);

export interface MembershipOptions {
  controlPlaneUrl: string;
  joinToken?: string;
  nodeId: string;
  /** The token the control plane must present to this agent. */
  nodeToken: string;
  advertiseUrl: string;
  config: RuntimeConfig;
  maxSandboxes: number;
  /** Templates the object store holds (reported with the node's own). */
  storedTemplates?: () => Promise<string[]>;
  version: string;
  log: (msg: string) => void;
}

/**
 * This agent's membership of a fleet: it joins the control plane with a join token once,
 * keeps the credential it gets (in its data directory, 0600), and sends heartbeats with its
 * capacity and templates. A credential the control plane no longer accepts (the node was
 * removed) makes it join again when it still has a valid join token, and say so otherwise.
 */
export class FleetMembership {
  private credential: string | null = null;
  private timer: NodeJS.Timeout | null = null;
  private heartbeatMs = 2_000;
  private stopped = false;
  lastError: string | null = null;

  constructor(private readonly o: MembershipOptions) {}

  private get credentialFile() {
    return path.join(this.o.config.dataDir, 'node-credential');
  }

  async start(): Promise<void> {
    this.credential = (await readFile(this.credentialFile, 'utf8').catch(() => '')).trim() || null;
    if (!this.credential) await this.join();
    else await this.heartbeat(); // proves the kept credential, or joins again
    this.schedule();
  }

  stop() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private schedule() {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.heartbeat()
        .catch((e: unknown) => {
          const msg = (e as Error).message;
          if (msg !== this.lastError) this.o.log(`heartbeat to ${this.o.controlPlaneUrl} failed: ${msg}`);
          this.lastError = msg;
        })
        .finally(() => this.schedule());
    }, this.heartbeatMs);
    this.timer.unref();
  }

  private async join(): Promise<void> {
    if (!this.o.joinToken) {
      throw new Error('this node has no credential: start it with --join-token (make one with `nestbox nodes join-token`)');
    }
    const request: JoinBody = { joinToken: this.o.joinToken, nodeId: this.o.nodeId, nodeToken: this.o.nodeToken, ...(await this.report()) };
    const res = await this.post(MEMBERSHIP_ROUTES.join, request);
    const body = (await res.json()) as Partial<Joined> & MembershipFailure;
    if (res.status !== MEMBERSHIP_STATUS.joined || !body.credential) {
      throw new Error(`joining ${this.o.controlPlaneUrl} failed: ${res.status} ${body.message ?? ''}`.trim());
    }
    this.credential = body.credential;
    this.heartbeatMs = body.heartbeatMs ?? this.heartbeatMs;
    const tmp = `${this.credentialFile}.new`;
    await writeFile(tmp, body.credential + '\n', { mode: 0o600 });
    await rename(tmp, this.credentialFile);
    this.o.log(`joined ${this.o.controlPlaneUrl} as node ${this.o.nodeId}`);
  }

  private async heartbeat(): Promise<void> {
    const res = await this.post(nodePath(MEMBERSHIP_ROUTES.heartbeat, { id: this.o.nodeId }), await this.report(), this.credential ?? '');
    if (res.status === MEMBERSHIP_STATUS.unauthorized && this.o.joinToken) {
      await res.text();
      return this.join();
    }
    const body = (await res.json()) as Partial<HeartbeatAnswer> & MembershipFailure;
    if (res.status !== MEMBERSHIP_STATUS.heartbeat) throw new Error(`${res.status} ${body.message ?? ''}`.trim());
    this.heartbeatMs = body.heartbeatMs ?? this.heartbeatMs;
    this.lastError = null;
  }

  private post(p: string, body: unknown, bearer?: string) {
    return fetch(new URL(p, this.o.controlPlaneUrl), {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(bearer ? { authorization: `Bearer ${bearer}` } : {}) },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
  }

  async report(): Promise<NodeReport> {
    const disk = await statfs(this.o.config.dataDir).catch(() => null);
    const templates: string[] = [];
    for (const name of await readdir(this.o.config.templatesDir).catch(() => [] as string[])) {
      if (TEMPLATE_NAME.test(name)) {
        if (await stat(path.join(this.o.config.templatesDir, name, 'rootfs')).then((st) => st.isDirectory(), () => false)) templates.push(name);
      }
    }
    // Templates in the object store count as this node's: a create of one fetches it.
    for (const name of await this.o.storedTemplates?.().catch(() => [] as string[]) ?? []) if (!templates.includes(name)) templates.push(name);
    return {
      url: this.o.advertiseUrl,
      cpuCount: os.availableParallelism(),
      memoryMB: Math.floor(os.totalmem() / 1024 / 1024),
      diskMB: disk ? Math.floor((disk.bavail * disk.bsize) / 1024 / 1024) : 0,
      maxSandboxes: this.o.maxSandboxes,
      templates,
      version: this.o.version,
    };
  }
}

/** Where the control plane reaches this agent: given, or this host's first external IPv4. */
export function defaultAdvertiseUrl(host: string, port: number): string {
  if (host !== '0.0.0.0' && host !== '::') return `http://${host}:${port}`;
  const external = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
  return `http://${external?.address ?? '127.0.0.1'}:${port}`;
}
