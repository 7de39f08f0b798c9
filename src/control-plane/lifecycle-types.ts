import type { SandboxState } from '../core/states.ts';
import type { SandboxRow } from '../store/sandboxes.ts';

/** The stored fields no route shows (env vars are secrets given at create; the rest is bookkeeping). */
export type HiddenSandboxField = 'envVars' | 'timeoutMs' | 'remainingMs' | 'stateChangedAt' | 'lastReason' | 'createdAt';

/** A sandbox as the control plane shows it (all routes render from this): its stored row, less the hidden fields. */
export type SandboxView = Omit<SandboxRow, HiddenSandboxField>;

export interface CreateSandboxParams {
  teamId: string;
  templateId: string;
  timeoutMs: number;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  autoPause: boolean;
  autoPauseMemory: boolean;
  autoResume: boolean;
  allowInternetAccess: boolean;
  secure: boolean;
  /** Start from this snapshot (its memory and files) instead of the template's files. */
  fromSnapshot?: SnapshotSource;
}

/** A named snapshot (or a fork's) a sandbox starts from, with the resources it was taken with. */
export interface SnapshotSource {
  snapshotId: string;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
}

export interface ListSandboxesParams {
  states?: SandboxState[]; // default: every non-terminal state
  metadata?: Record<string, string>; // all pairs must match
  limit: number;
  nextToken?: string;
  /** By start time; default desc (newest first), as E2B. */
  order?: 'asc' | 'desc';
  /** Only sandboxes started at or after this time. */
  startedAfter?: Date;
  /** Only sandboxes of this template (ID or alias). */
  template?: string;
}

export interface SandboxMetrics {
  timestamp: Date;
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number; // bytes
  memTotal: number; // bytes
  diskUsed: number;
  diskTotal: number;
}

/**
 * The lifecycle service as the API sees it. Errors are NestboxError: not_found (unknown,
 * dead or another team's sandbox), conflict (wrong state), limit (quota), unavailable
 * (retryable: no node can take it now), invalid.
 */
export interface LifecycleApi {
  create(p: CreateSandboxParams): Promise<SandboxView>;
  get(teamId: string, sandboxId: string): Promise<SandboxView>;
  list(teamId: string, p: ListSandboxesParams): Promise<{ sandboxes: SandboxView[]; nextToken: string | null; totalRunning: number }>;
  kill(teamId: string, sandboxId: string): Promise<void>;
  /** Returns when the snapshot is done. conflict when the sandbox is not running. */
  pause(teamId: string, sandboxId: string, opts: { memory: boolean }): Promise<void>;
  /** Running: extends the timeout (never shortens). Paused: resumes. */
  connect(teamId: string, sandboxId: string, timeoutMs: number): Promise<{ sandbox: SandboxView; resumed: boolean }>;
  /** Legacy resume (SDK < 2.6): conflict when already running. */
  resume(teamId: string, sandboxId: string, timeoutMs: number, opts?: { autoPause?: boolean }): Promise<SandboxView>;
  /** Sets the end of a running sandbox to now + timeout; may shorten. conflict when paused. */
  setTimeout(teamId: string, sandboxId: string, timeoutMs: number): Promise<void>;
  /** Extends to now + duration when that is later; never shortens. */
  refresh(teamId: string, sandboxId: string, durationMs: number): Promise<void>;
  metrics(teamId: string, sandboxId: string): Promise<SandboxMetrics[]>;
}
