import { randomBytes } from 'node:crypto';
import { mkdir, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { Agent } from '../../src/agent/agent.ts';
import { runtimeConfigFromEnv, type RuntimeConfig } from '../../src/runtime/config.ts';
import { newSandboxId } from '../../src/core/ids.ts';

export const TEST_ROOT = process.env.NESTBOX_TEST_ROOT ?? '/var/lib/nestbox/test';

export interface TestAgent {
  agent: Agent;
  url: string;
  dataDir: string;
  snapshotDir: string;
  api: (method: string, p: string, body?: unknown, headers?: Record<string, string>) => Promise<Response>;
  json: <T = any>(method: string, p: string, body?: unknown) => Promise<T>;
  stop: () => Promise<void>;
}

/** Calls to an agent's internal API with its node token. */
export function agentClient(url: string, token: string): Pick<TestAgent, 'api' | 'json'> {
  const api = (method: string, p: string, body?: unknown, headers: Record<string, string> = {}) =>
    fetch(url + p, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body !== undefined && !(body instanceof Uint8Array) ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : body instanceof Uint8Array ? (body as unknown as BodyInit) : JSON.stringify(body),
    });
  const json = async (method: string, p: string, body?: unknown) => {
    const res = await api(method, p, body);
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p} -> ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  };
  return { api, json };
}

/** A real node agent on a private data dir (and, unless given, a private snapshot store). */
export async function startTestAgent(opts: { snapshotDir?: string; host?: string; config?: Partial<RuntimeConfig> } = {}): Promise<TestAgent> {
  const base = path.join(TEST_ROOT, randomBytes(4).toString('hex'));
  const dataDir = path.join(base, 'node');
  const snapshotDir = opts.snapshotDir ?? path.join(base, 'snapshots');
  await mkdir(dataDir, { recursive: true });
  const config = { ...runtimeConfigFromEnv(), ...opts.config, dataDir, snapshotDir };
  const agent = new Agent({ config, port: 0, host: opts.host ?? '127.0.0.1' });
  const url = await agent.start();
  const { api, json } = agentClient(url, agent.nodeToken);
  return {
    agent, url, dataDir, snapshotDir, api, json,
    stop: async () => {
      for (const s of await agent.runtime.inventory()) await agent.runtime.kill(s.sandboxId).catch(() => undefined);
      await agent.stop();
      if (!opts.snapshotDir) await rm(base, { recursive: true, force: true });
      else {
        await rm(dataDir, { recursive: true, force: true });
        await rmdir(base).catch(() => undefined); // empty unless it holds the shared snapshot store
      }
    },
  };
}

export interface ExecResult {
  pid: number;
  stdout: string;
  stderr: string;
  pty: string;
  exitCode: number | null;
  signal: number | null;
  events: string[];
}

/** Reads an NDJSON process stream from the agent to its end. */
export async function readProcessStream(res: Response): Promise<ExecResult> {
  if (!res.ok) throw new Error(`process stream: ${res.status} ${await res.text()}`);
  const out: ExecResult = { pid: 0, stdout: '', stderr: '', pty: '', exitCode: null, signal: null, events: [] };
  const text = await res.text();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const m = JSON.parse(line);
    out.events.push(m.type);
    if (m.type === 'start') out.pid = m.pid;
    else if (m.type === 'data') (out as any)[m.channel] += Buffer.from(m.data, 'base64').toString('utf8');
    else if (m.type === 'exit') {
      out.exitCode = m.exitCode;
      out.signal = m.signal;
    } else if (m.type === 'error') throw new Error(`process stream error: ${m.message}`);
  }
  return out;
}

export function exec(a: TestAgent, id: string, cmd: string, opts: { user?: string; env?: Record<string, string> } = {}) {
  return a
    .api('POST', `/v1/sandboxes/${id}/processes`, { argv: ['/bin/bash', '-c', cmd], user: opts.user, env: opts.env })
    .then(readProcessStream);
}

export async function createSandbox(a: TestAgent, extra: Record<string, unknown> = {}) {
  const sandboxId = newSandboxId();
  await a.json('POST', '/v1/sandboxes', {
    sandboxId, template: 'base', envVars: {}, metadata: {}, allowInternetAccess: false, ...extra,
  });
  return sandboxId;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `read` until `ok` holds for its value, and returns that value. The deadline only keeps
 * a broken implementation from hanging the suite; no test passes or fails on how fast it is.
 */
export async function eventually<T>(read: () => Promise<T>, ok: (v: T) => boolean, what = 'condition', deadlineMs = 60_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  let last: T | undefined;
  let lastError: unknown;
  for (let delay = 20; Date.now() < end; delay = Math.min(delay * 2, 250)) {
    try {
      last = await read();
      if (ok(last)) return last;
    } catch (e) {
      lastError = e;
    }
    await sleep(delay);
  }
  throw new Error(`${what} did not hold within ${deadlineMs} ms (last value ${JSON.stringify(last)}${lastError ? `, last error ${String(lastError)}` : ''})`);
}

/**
 * A background counter whose value lives in the process's memory: a restarted process would
 * count from 1. Each value is written whole (to a new file, renamed over /tmp/n): a reader never
 * sees the file between a truncate and its write.
 */
export const COUNTER_PROCESS = `python3 -c "
import os, time
i = 0
while True:
    i += 1
    open('/tmp/n.new', 'w').write(str(i))
    os.replace('/tmp/n.new', '/tmp/n')
    time.sleep(0.05)
"`;
/** COUNTER_PROCESS started in the background of a shell command. */
export const COUNTER = `nohup ${COUNTER_PROCESS} >/dev/null 2>&1 &`;

/** The counter's last value (0 before it first wrote). */
export async function readCount(a: TestAgent, id: string): Promise<number> {
  return Number((await exec(a, id, 'cat /tmp/n 2>/dev/null || echo 0')).stdout);
}
