// A real node agent as its own OS process (`nestbox agent`), for tests that send it signals:
// SIGTERM drains it, SIGKILL crashes it; start() again on the same dirs and port restarts it.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_ROOT } from './agent-harness.ts';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/nestbox');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface AgentProcessOptions {
  nodeId?: string;
  /** Shared snapshot store (several agents); default: private to this agent. */
  snapshotDir?: string;
  env?: Record<string, string>;
  /** More arguments of `nestbox agent` (e.g. --join URL --join-token T). */
  args?: string[];
  /** Runs the agent in this named network namespace (`ip netns`), as if on another host. */
  netns?: string;
  /** The address it listens on (default loopback); in a namespace, that namespace's address. */
  host?: string;
}

export class AgentProcess {
  readonly nodeId: string;
  readonly base: string;
  readonly dataDir: string;
  readonly snapshotDir: string;
  readonly netns: string | null;
  readonly host: string;
  readonly token = randomBytes(16).toString('hex');
  port = 0;
  proc: ChildProcess | null = null;
  stderr = '';
  exited: Promise<number | null> = Promise.resolve(null);

  /** Extra environment of the next start (a restart may change it: faults on or off). */
  env: Record<string, string>;
  args: string[];

  constructor(opts: AgentProcessOptions = {}) {
    this.env = opts.env ?? {};
    this.args = opts.args ?? [];
    this.nodeId = opts.nodeId ?? 'node-' + randomBytes(3).toString('hex');
    this.base = path.join(TEST_ROOT, randomBytes(4).toString('hex'));
    this.dataDir = path.join(this.base, 'node');
    this.snapshotDir = opts.snapshotDir ?? path.join(this.base, 'snapshots');
    this.netns = opts.netns ?? null;
    this.host = opts.host ?? '127.0.0.1';
  }

  get url() {
    return `http://${this.host}:${this.port}`;
  }

  /** Starts (or restarts, on the same port and directories) and resolves once it serves. */
  async start(): Promise<void> {
    await mkdir(this.dataDir, { recursive: true });
    if (!this.port) this.port = await freePort();
    this.stderr = '';
    const argv = ['agent', '--host', this.host, '--port', String(this.port), '--node-id', this.nodeId, ...this.args];
    // nsenter enters only the network namespace and execs the agent (same pid, signals reach it);
    // mounts stay the host's, as they would on a host of its own.
    const [cmd, ...cmdArgs] = this.netns ? ['nsenter', `--net=/run/netns/${this.netns}`, '--', BIN, ...argv] : [BIN, ...argv];
    const proc = spawn(cmd!, cmdArgs, {
      env: {
        ...process.env, NESTBOX_DATA_DIR: this.dataDir, NESTBOX_SNAPSHOT_DIR: this.snapshotDir,
        NESTBOX_NODE_TOKEN: this.token, NESTBOX_LOG_LEVEL: 'warn', ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    proc.stderr!.on('data', (d) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      proc.stdout!.on('data', (d) => {
        out += d.toString();
        if (out.includes('listening on')) resolve();
      });
      void this.exited.then((code) => reject(new Error(`agent exited (${code}) before serving: ${this.stderr}`)));
    });
  }

  signal(sig: NodeJS.Signals) {
    this.proc?.kill(sig);
  }

  async api(method: string, p: string, body?: unknown): Promise<Response> {
    return fetch(this.url + p, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async json<T = any>(method: string, p: string, body?: unknown): Promise<T> {
    const res = await this.api(method, p, body);
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p} -> ${res.status} ${text}`);
    return (text ? JSON.parse(text) : undefined) as T;
  }
}
