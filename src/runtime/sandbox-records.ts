// What the node keeps about the sandboxes it runs and the snapshots it paused.
import type { SandboxResources } from '../core/runtime-state.ts';
import type { SandboxFileHashes } from './sandbox-files.ts';
import type { PendingDeadline } from './command-deadlines.ts';

export interface CreateSandboxRequest {
  sandboxId: string;
  template: string;
  resources: SandboxResources;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  allowInternetAccess: boolean;
}

/** What the node keeps about a sandbox it runs (sandbox.json) or has paused (snapshot.json). */
export interface SandboxRecord extends CreateSandboxRequest {
  address: string;
  createdAt: string;
  /** When its container last started (create or restore) on this node. */
  startedAt?: string;
  /** What the node last wrote into /etc/hosts, hostname, resolv.conf (a file the sandbox changed is kept). */
  fileHashes?: SandboxFileHashes;
}

export interface SnapshotRecord {
  sandbox: SandboxRecord;
  memory: boolean; // CRIU images present; otherwise files only
  pausedAt: string;
  /** When the dump froze the sandbox (it stopped computing): where its billing ends. */
  stoppedAt?: string;
  sizeBytes?: number;
  /** With memory: what was left of each command's timeout when the sandbox stopped. */
  commandDeadlines?: PendingDeadline[];
}
