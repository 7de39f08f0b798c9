import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ControlPlane, type ControlPlaneOptions } from '../../src/control-plane/control-plane.ts';
import type { RuntimeConfig } from '../../src/runtime/config.ts';
import { startTestAgent, type TestAgent } from './agent-harness.ts';

export interface TestStack {
  agent: TestAgent;
  cp: ControlPlane;
  apiUrl: string;
  /** null when the stack runs without the sandbox proxy. */
  proxyUrl: string | null;
  key: string;
  /** The key the first start created (the given one), as `nestbox up` would print it. */
  createdApiKey: string | null;
  stop(): Promise<void>;
}

const ENV = ['E2B_API_URL', 'E2B_API_KEY', 'E2B_DOMAIN', 'E2B_SANDBOX_URL'] as const;

/**
 * What `nestbox up` runs, on private ports and a temporary PGlite: a real node agent (real
 * containers), the control plane and, unless `proxy: false`, the sandbox proxy. The e2b SDK is
 * pointed at it the way a user would do it: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, the three
 * variables `make up` prints (E2B_DOMAIN unset), restored by stop().
 */
export async function startStack(
  key: string, opts: { proxy?: boolean; extra?: Partial<ControlPlaneOptions>; agentConfig?: Partial<RuntimeConfig> } = {},
): Promise<TestStack> {
  const agent = await startTestAgent({ config: opts.agentConfig });
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-stack-'));
  const cp = new ControlPlane({
    dataDir: dir, port: 0, proxyPort: opts.proxy === false ? null : 0, bootstrapApiKey: key,
    nodes: [{ id: 'local', url: agent.url, token: agent.agent.nodeToken }],
    ...opts.extra,
  });
  const started = await cp.start();
  const saved = Object.fromEntries(ENV.map((k) => [k, process.env[k]]));
  process.env.E2B_API_URL = started.url;
  process.env.E2B_API_KEY = key;
  delete process.env.E2B_DOMAIN; // the three variables `make up` prints, and nothing else
  process.env.E2B_SANDBOX_URL = started.proxyUrl ?? 'http://127.0.0.1:1';
  return {
    agent, cp, apiUrl: started.url, proxyUrl: started.proxyUrl, key, createdApiKey: started.createdApiKey,
    async stop() {
      for (const k of ENV) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
      await cp.stop();
      await agent.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
