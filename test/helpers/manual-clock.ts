import type { Clock } from '../../src/control-plane/clock.ts';

/** A clock that moves only when a test says so (loops and timeouts without sleeping). */
export class ManualClock implements Clock {
  constructor(public t = Date.parse('2026-01-01T00:00:00Z')) {}
  now() {
    return new Date(this.t);
  }
  advance(ms: number) {
    this.t += ms;
  }
}
