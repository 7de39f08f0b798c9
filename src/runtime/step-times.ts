// Where an operation's time goes, step by step, beside runc and CRIU (make bench's question).

/**
 * NESTBOX_TRACE_STEPS=1: every create, pause, resume and kill, and every entry the root pool
 * makes ahead, writes one line to stderr with the time each of its steps took (ms), to see where
 * an operation's time goes beside runc and CRIU.
 */
const TRACE_STEPS = !!process.env.NESTBOX_TRACE_STEPS;

export class StepTimes {
  private readonly t0 = performance.now();
  private last = this.t0;
  private readonly steps: string[] = [];

  constructor(private readonly op: string, private readonly sandboxId: string) {}

  /** The step that just ended. */
  step(name: string) {
    if (!TRACE_STEPS) return;
    const now = performance.now();
    this.steps.push(`${name}=${(now - this.last).toFixed(1)}`);
    this.last = now;
  }

  end() {
    if (!TRACE_STEPS) return;
    process.stderr.write(`nestbox: steps ${this.op} ${this.sandboxId} total=${(performance.now() - this.t0).toFixed(1)} ${this.steps.join(' ')}\n`);
  }
}
