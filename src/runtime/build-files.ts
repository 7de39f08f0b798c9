// The files template builds copy: the tarballs E2B's SDK uploads for each COPY step, kept by
// content hash per team under <templatesDir>/.build-files/<team>/<hash> (beside the templates,
// so every node sharing the templates directory sees them). An upload is written under a
// temporary name and renamed into place once whole; a later build with the same files reuses it.
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { invalid, NestboxError } from '../core/errors.ts';
import type { RuntimeConfig } from './config.ts';
import { exists } from './fs-util.ts';

const OWNER = /^[A-Za-z0-9_-]{1,128}$/;
const HASH = /^[0-9a-f]{64}$/;

export class BuildFileStore {
  constructor(
    private readonly cfg: Pick<RuntimeConfig, 'templatesDir'>,
    private readonly maxBytes: number,
  ) {}

  /** Where a stored file is (whether it is there or not). */
  path(owner: string, hash: string): string {
    if (!OWNER.test(owner) || !HASH.test(hash)) throw invalid('invalid build file owner or hash');
    return path.join(this.cfg.templatesDir, '.build-files', owner, hash);
  }

  async has(owner: string, hash: string): Promise<boolean> {
    return exists(this.path(owner, hash));
  }

  /** Stores `source` (at most maxBytes) as the file of `hash`; replaces an earlier upload of it. */
  async put(owner: string, hash: string, source: Readable): Promise<{ bytes: number }> {
    const final = this.path(owner, hash);
    await mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    const partial = `${final}.partial-${randomBytes(4).toString('hex')}`;
    let bytes = 0;
    const limit = this.maxBytes;
    const count = new Transform({
      transform(chunk: Buffer, _enc, done) {
        bytes += chunk.length;
        if (bytes > limit) return done(invalid(`the upload is larger than ${Math.floor(limit / 1024 / 1024)} MiB (NESTBOX_TEMPLATE_MAX_MB)`));
        done(null, chunk);
      },
    });
    try {
      await pipeline(source, count, createWriteStream(partial, { mode: 0o600 }));
      await rename(partial, final);
      return { bytes };
    } catch (e) {
      source.resume();
      await rm(partial, { force: true });
      if (e instanceof NestboxError) throw e;
      throw new NestboxError('internal', `storing build file ${hash} failed: ${(e as Error).message}`);
    }
  }
}
