import { unavailable } from '../core/errors.ts';

/**
 * Admission of new starts on a node. Once draining, new starts are refused as retryable;
 * starts already admitted run to completion and are never refused by a later check.
 */
export class DrainGate {
  private _draining = false;
  private _inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  get draining() {
    return this._draining;
  }
  get inFlight() {
    return this._inFlight;
  }

  async admit<T>(work: () => Promise<T>): Promise<T> {
    if (this._draining) throw unavailable('node is draining; place the sandbox elsewhere');
    this._inFlight++;
    try {
      return await work();
    } finally {
      this._inFlight--;
      if (this._inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Stops admitting and resolves when every admitted start has finished. */
  async drain(): Promise<void> {
    this._draining = true;
    if (this._inFlight === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}
