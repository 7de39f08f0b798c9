/**
 * The sandbox state machine: the one table every state change is checked against.
 * See docs: a sandbox is `starting` until its container answers, `running` while billed,
 * `paused` while only its snapshot exists, and ends `killed` or `failed`.
 */
export const SANDBOX_STATES = [
  'starting', 'running', 'pausing', 'paused', 'resuming', 'killing', 'killed', 'failed',
] as const;
export type SandboxState = (typeof SANDBOX_STATES)[number];

/** from -> the states it may move to. */
export const TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  starting: ['running', 'killing', 'failed'],
  running: ['pausing', 'killing'],
  // a failed pause whose container is intact returns to running
  pausing: ['paused', 'running', 'killing'],
  paused: ['resuming', 'killing'],
  // a failed resume keeps the snapshot and returns to paused
  resuming: ['running', 'paused', 'killing'],
  killing: ['killed'],
  killed: [],
  failed: [],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function isTerminal(state: SandboxState): boolean {
  return state === 'killed' || state === 'failed';
}

/** A transition is in flight while the sandbox is in one of these. */
export function isTransitional(state: SandboxState): boolean {
  return state === 'starting' || state === 'pausing' || state === 'resuming' || state === 'killing';
}

export const EVENT_REASONS = [
  'requested', 'timeout', 'pause_failed', 'resume_failed', 'lost', 'orphaned', 'drain', 'quota',
  'create_failed', 'created', 'resumed', 'paused', 'recovered',
] as const;
export type EventReason = (typeof EVENT_REASONS)[number];

export interface LifecycleEvent {
  id: string; // stable, unique: consumers are idempotent on it
  seq?: number; // order in the outbox
  sandboxId: string;
  teamId: string;
  from: SandboxState | null; // null for the first event of a sandbox
  to: SandboxState;
  reason: EventReason;
  generation: number;
  at: Date;
}
