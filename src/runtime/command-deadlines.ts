// Deadlines of commands started with a timeout (E2B's `timeoutMs`): the process is killed once
// its sandbox has run that long since the command started. The runtime keeps them, not the
// request that started the command, so that they go with the sandbox: a pause records what is
// left of each in the snapshot, and a resume (on this node or another) arms them again. Time
// spent paused does not count, as in E2B, where the sandbox's clock stops with it.

/** A deadline as a snapshot keeps it. */
export interface PendingDeadline {
  pid: number;
  /** The command's argv[0]: a pid reused by another program is not killed. */
  argv0: string;
  remainingMs: number;
}

/** Kills the command if it still runs (the same program); throws when the sandbox cannot be reached. */
export type KillCommand = (sandboxId: string, pid: number, argv0: string) => Promise<void>;

interface Deadline {
  argv0: string;
  /** Epoch ms when it passes. */
  at: number;
  timer: NodeJS.Timeout;
}

/** While the sandbox cannot be reached (a pause under way), a passed deadline is tried again this often. */
const RETRY_MS = 1_000;

export class CommandDeadlines {
  private readonly bySandbox = new Map<string, Map<number, Deadline>>();

  constructor(private readonly kill: KillCommand) {}

  /** The command `pid` of the sandbox is killed `ms` from now. */
  arm(sandboxId: string, pid: number, argv0: string, ms: number): void {
    let deadlines = this.bySandbox.get(sandboxId);
    if (!deadlines) this.bySandbox.set(sandboxId, (deadlines = new Map()));
    const prior = deadlines.get(pid);
    if (prior) clearTimeout(prior.timer);
    const at = Date.now() + Math.max(0, ms);
    deadlines.set(pid, { argv0, at, timer: this.schedule(sandboxId, pid, Math.max(0, ms)) });
  }

  /** The command ended: its deadline goes. */
  disarm(sandboxId: string, pid: number): void {
    const deadlines = this.bySandbox.get(sandboxId);
    const d = deadlines?.get(pid);
    if (!d) return;
    clearTimeout(d.timer);
    deadlines!.delete(pid);
    if (!deadlines!.size) this.bySandbox.delete(sandboxId);
  }

  /** What is left of each deadline at `at` (when the sandbox stopped), without changing them. */
  remaining(sandboxId: string, at: Date): PendingDeadline[] {
    return [...(this.bySandbox.get(sandboxId) ?? [])].map(([pid, d]) => ({
      pid, argv0: d.argv0, remainingMs: Math.max(0, d.at - at.getTime()),
    }));
  }

  /** Arms the deadlines a snapshot kept, each with what was left of it when the sandbox stopped. */
  restore(sandboxId: string, pending: PendingDeadline[] | undefined): void {
    for (const p of boundedDeadlines(pending)) this.arm(sandboxId, p.pid, p.argv0, p.remainingMs);
  }

  /** The sandbox left this node or ended: its deadlines go (a snapshot holds what is left of them). */
  forget(sandboxId: string): void {
    for (const d of this.bySandbox.get(sandboxId)?.values() ?? []) clearTimeout(d.timer);
    this.bySandbox.delete(sandboxId);
  }

  private schedule(sandboxId: string, pid: number, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const d = this.bySandbox.get(sandboxId)?.get(pid);
      if (!d || d.timer !== timer) return;
      this.kill(sandboxId, pid, d.argv0).then(
        () => this.disarm(sandboxId, pid),
        // Not reachable now (being paused, or restarting): tried again, unless it goes meanwhile.
        () => {
          const still = this.bySandbox.get(sandboxId)?.get(pid);
          if (still === d) d.timer = this.schedule(sandboxId, pid, RETRY_MS);
        },
      );
    }, ms);
    timer.unref();
    return timer;
  }
}

const MAX_DEADLINES = 4096;
const MAX_REMAINING_MS = 366 * 24 * 3600 * 1000;

/** A snapshot's deadlines, as far as they make sense (the record is the node's own, but bounded all the same). */
function boundedDeadlines(pending: PendingDeadline[] | undefined): PendingDeadline[] {
  if (!Array.isArray(pending)) return [];
  return pending.slice(0, MAX_DEADLINES).filter((p) =>
    Number.isSafeInteger(p?.pid) && p.pid > 0 && typeof p.argv0 === 'string' &&
    Number.isFinite(p.remainingMs) && p.remainingMs >= 0 && p.remainingMs <= MAX_REMAINING_MS);
}
