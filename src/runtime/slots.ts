// A counting semaphore: at most `size` holders at once, the others served in the order they came.

/**
 * Used to run a node's heavy starts (a new container laid out and started from nothing) a few
 * at a time: twenty at once on two CPUs all finished late (each ~2.5 s), while in turns the
 * first are done in a fraction of that, and the total is no longer.
 */
export class Slots {
  private held = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`slots: size must be a whole number >= 1, not ${size}`);
  }

  /** Holders now. */
  get inUse(): number {
    return this.held;
  }

  /** Waiting for a slot now. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Waits for a slot; the function returned gives it back (once, however often it is called). */
  async acquire(): Promise<() => void> {
    if (this.held < this.size) this.held++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // handed over by a holder
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const next = this.waiting.shift();
      if (next) next();
      else this.held--;
    };
  }

  async run<T>(f: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await f();
    } finally {
      release();
    }
  }
}
