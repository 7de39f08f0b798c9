import type { SandboxRuntime } from '../runtime/sandbox-runtime.ts';
import type { DrainPolicy } from '../node-api/wire.ts';
import type { StartGate } from './start-gate.ts';

export interface DrainPlan {
  policy: DrainPolicy;
  /** After this the control plane stops what is left (reason `drain`), then the node itself does. */
  deadline: Date;
}

export interface ShutdownReport {
  /** Live sandboxes when the drain began, and how many left the node in time (paused or ended). */
  liveAtStart: number;
  leftInTime: number;
  /** Stopped by the node itself because nobody stopped them before the deadline. */
  forceStopped: string[];
  /** Real failures on the way: reported, never swallowed. */
  errors: string[];
}

const POLL_MS = 200;

/**
 * The one-node form of drain (README, "When things fail"), run on SIGTERM:
 *  1. stop admitting starts (refused as retryable) and let the admitted ones finish;
 *  2. advertise the drain plan (GET /v1/node); the control plane pauses the live sandboxes
 *     through its lifecycle (their events: reason `drain`), or by policy lets them run on;
 *  3. at the deadline the control plane stops what is left; after a short hand-over margin the
 *     node force-stops whatever still runs (the reconciler records those as lost) and says so.
 */
export async function drainNode(
  runtime: SandboxRuntime,
  starts: StartGate,
  plan: DrainPlan,
  opts: { handoverMs?: number; log?: (msg: string) => void } = {},
): Promise<ShutdownReport> {
  const log = opts.log ?? (() => undefined);
  const handoverMs = opts.handoverMs ?? 3_000;
  const report: ShutdownReport = { liveAtStart: 0, leftInTime: 0, forceStopped: [], errors: [] };
  await starts.closeAndWait(); // admitted starts finish; nothing new is admitted
  const live = async () => {
    const inv = await runtime.inventory();
    return inv.filter((s) => s.state === 'running' || s.state === 'creating').map((s) => s.sandboxId);
  };
  const atStart = await live();
  report.liveAtStart = atStart.length;
  log(`draining: ${atStart.length} live sandboxes, policy ${plan.policy}, deadline ${plan.deadline.toISOString()}`);
  let remaining = atStart;
  for (;;) {
    remaining = await live();
    if (remaining.length === 0 && runtime.busy().length === 0) break;
    if (Date.now() >= plan.deadline.getTime() + handoverMs) break;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  report.leftInTime = atStart.filter((id) => !remaining.includes(id)).length;
  for (const id of remaining) {
    try {
      await runtime.kill(id); // its snapshot, if any, stays
      report.forceStopped.push(id);
    } catch (e) {
      report.errors.push(`could not stop ${id}: ${(e as Error).message}`);
    }
  }
  if (report.forceStopped.length) {
    report.errors.push(
      `${report.forceStopped.length} sandboxes were still running at the deadline and were stopped by the node ` +
        `(${report.forceStopped.join(', ')}); the control plane records them as lost`,
    );
  }
  return report;
}
