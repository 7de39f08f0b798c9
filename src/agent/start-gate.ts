import { unavailable } from '../core/errors.ts';

/**
 * Admission of new starts (create, resume) on a node. Closed when the node drains: new starts
 * are then refused as retryable; starts already admitted run to completion and are never
 * refused by a later check.
 */
export class StartGate {
  private _closed = false;
  private _inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  /** No new start is admitted (the node is draining). */
  get closed() {
    return this._closed;
  }
  get inFlight() {
    return this._inFlight;
  }

  async admit<T>(work: () => Promise<T>): Promise<T> {
    if (this._closed) throw unavailable('node is draining; place the sandbox elsewhere');
    this._inFlight++;
    try {
      return await work();
    } finally {
      this._inFlight--;
      if (this._inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Stops admitting and resolves when every admitted start has finished. */
  async closeAndWait(): Promise<void> {
    this._closed = true;
    if (this._inFlight === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}
