// Whether a sandbox's init still answers while calls and streams wait on it.
import { InitError } from './errors.ts';

export interface LivenessWaiter {
  progress(): void;
  stop(): void;
}

/**
 * One per client. While calls or streams wait on the init, each `intervalMs` in which some of
 * them heard nothing, one ping on a fresh connection checks that the init still answers; when
 * it does not, every waiter that heard nothing fails at once. A stopped init (ptrace, a frozen
 * cgroup) thus fails calls and streams within seconds, and a long silent stream of a live
 * process costs one ping per interval and sandbox, not per stream.
 */
export class LivenessMonitor {
  private readonly waiters = new Set<{ progressed: boolean; dead: (e: InitError) => void }>();
  private timer: NodeJS.Timeout | null = null;
  private pinging = false;

  constructor(
    private readonly ping: () => Promise<unknown>,
    private readonly intervalMs: number,
    private readonly pingTimeoutMs: number,
  ) {}

  watch(dead: (e: InitError) => void): LivenessWaiter {
    const w = { progressed: false, dead };
    this.waiters.add(w);
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.intervalMs);
      this.timer.unref();
    }
    return {
      progress: () => (w.progressed = true),
      stop: () => {
        this.waiters.delete(w);
        if (this.waiters.size === 0 && this.timer) {
          clearInterval(this.timer);
          this.timer = null;
        }
      },
    };
  }

  private tick() {
    const silent = [...this.waiters].filter((w) => !w.progressed);
    for (const w of this.waiters) w.progressed = false;
    if (silent.length === 0 || this.pinging) return;
    this.pinging = true;
    this.ping().then(
      () => (this.pinging = false),
      (e: unknown) => {
        this.pinging = false;
        const why = e instanceof Error ? e.message : String(e);
        const err = new InitError('unavailable', `the sandbox is not responding: its init did not answer a ping within ${this.pingTimeoutMs} ms (${why})`);
        for (const w of silent) if (this.waiters.has(w)) w.dead(err);
      },
    );
  }
}
