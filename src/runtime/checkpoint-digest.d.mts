// Types of checkpoint-digest.mjs (plain JavaScript, for the hashing threads).

/** The checkpoint object's manifest entry: its digest's kind, sha256 and size. */
export interface CheckpointEntry {
  name: 'checkpoint';
  sha256: string;
  size: number;
  /** Absent: the sha256 of the object's canonical tar stream. "files": see checkpointFilesDigest. */
  digest?: 'files';
}

/** What followDump synced of one memory image while the dump ran. */
export interface FollowedImage {
  ino: number;
  size: number;
}
export type FollowedImages = Record<string, FollowedImage>;

export function checkpointTarDigest(dir: string): CheckpointEntry | null;
export function checkpointFilesDigest(dir: string): CheckpointEntry;
export function followDump(imagesDir: string, flag: Int32Array): Promise<FollowedImages>;
