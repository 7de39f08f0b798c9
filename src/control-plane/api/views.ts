import type { SandboxState } from '../../core/states.ts';
import type { SandboxMetrics, SandboxView } from '../lifecycle-types.ts';
import type { ListedSandbox, SandboxCreated, SandboxDetail, SandboxMetric } from './schemas.ts';

// Renders domain views in E2B's wire shapes. E2B shows only two states; ours map onto them.

/** Deprecated in E2B, still required by the SDK's types: a constant. */
export const CLIENT_ID = '6532622b';

export type PublicState = 'running' | 'paused';

/** The stored states shown as each public state. */
export const STORED_STATES: Readonly<Record<PublicState, readonly SandboxState[]>> = {
  // resuming: on its way back; a connect joins the resume in flight
  running: ['starting', 'running', 'resuming'],
  // pausing: on its way to a snapshot; its processes are frozen already
  paused: ['pausing', 'paused'],
};

/** The public state of a stored one; null for a sandbox that is gone or going (hidden: 404). */
export function publicState(state: SandboxState): PublicState | null {
  if (STORED_STATES.running.includes(state)) return 'running';
  if (STORED_STATES.paused.includes(state)) return 'paused';
  return null;
}

export function storedStates(states: Iterable<PublicState>): SandboxState[] {
  const out = new Set<SandboxState>();
  for (const s of states) for (const stored of STORED_STATES[s]) out.add(stored);
  return [...out];
}

export interface RenderContext {
  envdVersion: string;
  domain: string | null;
  now: () => Date;
}

export function renderCreated(v: SandboxView, ctx: RenderContext): SandboxCreated {
  return {
    sandboxID: v.sandboxId,
    templateID: v.templateId,
    alias: v.templateId,
    clientID: CLIENT_ID,
    envdVersion: ctx.envdVersion,
    ...(v.envdAccessToken ? { envdAccessToken: v.envdAccessToken } : {}),
    trafficAccessToken: null,
    domain: ctx.domain,
  };
}

/** Callers filter out hidden states first (see publicState). */
export function renderListed(v: SandboxView, ctx: RenderContext): ListedSandbox {
  return {
    sandboxID: v.sandboxId,
    templateID: v.templateId,
    alias: v.templateId,
    clientID: CLIENT_ID,
    startedAt: v.startedAt.toISOString(),
    // A paused sandbox's clock is stopped (the remaining time is kept, not an end): show now.
    endAt: (v.endAt ?? ctx.now()).toISOString(),
    cpuCount: v.cpuCount,
    memoryMB: v.memoryMB,
    diskSizeMB: v.diskSizeMB,
    metadata: v.metadata,
    state: publicState(v.state) ?? 'paused',
    envdVersion: ctx.envdVersion,
  };
}

export function renderDetail(v: SandboxView, ctx: RenderContext): SandboxDetail {
  return {
    ...renderListed(v, ctx),
    ...(v.envdAccessToken ? { envdAccessToken: v.envdAccessToken } : {}),
    domain: ctx.domain,
    allowInternetAccess: v.allowInternetAccess,
    lifecycle: { autoResume: v.autoResume, onTimeout: v.autoPause ? 'pause' : 'kill' },
    nodeId: v.nodeId,
  };
}

export function renderMetric(m: SandboxMetrics): SandboxMetric {
  return {
    timestamp: m.timestamp.toISOString(),
    timestampUnix: Math.floor(m.timestamp.getTime() / 1000),
    cpuCount: m.cpuCount,
    cpuUsedPct: m.cpuUsedPct,
    memUsed: Math.round(m.memUsed),
    memTotal: Math.round(m.memTotal),
    memCache: 0, // not measured
    diskUsed: Math.round(m.diskUsed),
    diskTotal: Math.round(m.diskTotal),
  };
}
