/** The control plane's source of "now" (tests drive a manual one). */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
