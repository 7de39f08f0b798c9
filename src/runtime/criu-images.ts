import { closeSync, constants, fchmodSync, fchownSync, fstatSync, openSync, readdirSync } from 'node:fs';
import path from 'node:path';

/**
 * Restore opens the images as the sandbox's mapped root, so they are handed over to it and
 * kept private (0600: they hold the sandbox's memory). One exception: CRIU reads the time
 * namespace image from a child that may not have its uid mapping yet (seen failing about one
 * restore in thirty with EACCES), so that image - clock offsets only - is world-readable and
 * the directory traversable, not listable.
 *
 * CRIU writes the images itself, but they describe what the sandbox did: every entry is
 * changed through a descriptor opened without following links, and anything that is not a
 * plain file is refused rather than handed over.
 */
export async function handOverImages(dir: string, uid: number): Promise<void> {
  // In calls that block this thread: a dump's tens of files take ~200 system calls, about 1 ms.
  // As promises they took 4.5-14 ms, each call a trip through libuv's thread pool, and the
  // pause's next steps (its unmounts) queued behind them.
  const d = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    fchownSync(d, uid, uid);
    fchmodSync(d, 0o711);
  } finally {
    closeSync(d);
  }
  for (const name of readdirSync(dir)) {
    const f = openSync(path.join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      if (!fstatSync(f).isFile()) throw new Error(`checkpoint images: ${name} is not a plain file`);
      fchownSync(f, uid, uid);
      fchmodSync(f, name.startsWith('timens-') ? 0o644 : 0o600);
    } finally {
      closeSync(f);
    }
  }
}
