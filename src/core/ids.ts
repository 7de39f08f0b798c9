import { randomBytes } from 'node:crypto';

// E2B sandbox ids are 20 lower-case alphanumerics; the SDK and host-name routing rely on it.
const SANDBOX_ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
export const SANDBOX_ID_PATTERN = /^[a-z0-9]{20}$/;

export function newSandboxId(): string {
  const bytes = randomBytes(20);
  let id = '';
  for (const b of bytes) id += SANDBOX_ID_ALPHABET[b % SANDBOX_ID_ALPHABET.length];
  return id;
}

export function isSandboxId(value: string): boolean {
  return SANDBOX_ID_PATTERN.test(value);
}

// A named snapshot (and a fork's source) is kept under an id of its own kind, never a sandbox's.
export const NAMED_SNAPSHOT_ID_PATTERN = /^snap-[a-z0-9]{20}$/;

export function newNamedSnapshotId(): string {
  return `snap-${newSandboxId()}`;
}

/** A key of the snapshot store: a paused sandbox's id, or a named snapshot's. */
export function isSnapshotKey(value: string): boolean {
  return SANDBOX_ID_PATTERN.test(value) || NAMED_SNAPSHOT_ID_PATTERN.test(value);
}

// Template names are also directory names on the node: keep them to a safe alphabet.
export const TEMPLATE_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;
