// Requests in progress on each sandbox (envd calls and their streams), and the sandboxes that
// take no new ones: a pause closes the door first, then waits for what is in progress, so a
// request is either answered before the dump or refused untouched (and the proxy sends it on
// to wherever the sandbox goes next).

export class RequestAdmission {
  private readonly inProgress = new Map<string, number>();
  private readonly closed = new Set<string>();
  private readonly idleWaiters = new Map<string, Set<() => void>>();

  /** Admits a request: its release function, or null when the sandbox takes no more requests. */
  enter(sandboxId: string): (() => void) | null {
    if (this.closed.has(sandboxId)) return null;
    this.inProgress.set(sandboxId, (this.inProgress.get(sandboxId) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.inProgress.get(sandboxId) ?? 1) - 1;
      if (n > 0) return void this.inProgress.set(sandboxId, n);
      this.inProgress.delete(sandboxId);
      for (const wake of this.idleWaiters.get(sandboxId) ?? []) wake();
      this.idleWaiters.delete(sandboxId);
    };
  }

  isClosed(sandboxId: string): boolean {
    return this.closed.has(sandboxId);
  }

  count(sandboxId: string): number {
    return this.inProgress.get(sandboxId) ?? 0;
  }

  /** No new requests for the sandbox until open() (those in progress go on). */
  close(sandboxId: string): void {
    this.closed.add(sandboxId);
  }

  /** The sandbox takes requests (it was started, or a pause failed and it runs on). */
  open(sandboxId: string): void {
    this.closed.delete(sandboxId);
  }

  /** Waits until no request is in progress on the sandbox, or `ms` passed. */
  async idle(sandboxId: string, ms: number): Promise<void> {
    if (!this.count(sandboxId) || ms <= 0) return;
    await new Promise<void>((resolve) => {
      let set = this.idleWaiters.get(sandboxId);
      if (!set) this.idleWaiters.set(sandboxId, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        set.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }

  /** The sandbox is gone from this node: nothing of it is kept (requests still open release harmlessly). */
  forget(sandboxId: string): void {
    this.closed.delete(sandboxId);
  }
}
