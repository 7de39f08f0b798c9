// Reading an image archive: `docker save` tarballs (manifest.json) and OCI image layout tarballs
// (oci-layout, index.json, blobs/). The outer archive is spooled to files first (a docker save
// writes manifest.json last, so layer order is known only at the end), then the image's layers
// and config are found through the manifest. The archive is untrusted: names in it are only ever
// keys of a map here, never paths on the host.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { invalid, NestboxError } from '../core/errors.ts';

/** A file of the outer archive, spooled to disk. */
interface SpooledFile {
  file: string;
  size: number;
  sha256: string;
}

export interface ImageLayerRef {
  /** The archive's name for it (a docker save path or an OCI digest). */
  name: string;
  file: string;
  size: number;
}

export interface ImageConfigDefaults {
  env: Record<string, string>;
  workdir: string | null;
  user: string | null;
  entrypoint: string[] | null;
  cmd: string[] | null;
}

export interface ImageDescription {
  format: 'docker' | 'oci';
  layers: ImageLayerRef[];
  config: ImageConfigDefaults;
  /** The image's config digest (sha256:...) when the archive names it. */
  configDigest: string | null;
  repoTags: string[];
}

const MAX_JSON_BYTES = 16 * 1024 * 1024;
const MAX_OUTER_ENTRIES = 100_000;
const DIGEST = /^sha256:([a-f0-9]{64})$/;

/** The outer archive's entry names, normalised ("./a//b" is "a/b"); null for names that escape. */
function archiveKey(name: string): string | null {
  const parts: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') return null;
    parts.push(part);
  }
  return parts.join('/');
}

export class SpooledArchive {
  private readonly files = new Map<string, SpooledFile>();
  private readonly links = new Map<string, string>();

  constructor(private readonly dir: string) {}

  /**
   * Reads the outer tar into `dir`, one file per regular entry. `onBytes` is told the number of
   * archive bytes read so far.
   */
  async receive(source: Readable, onBytes?: (bytes: number) => void, maxBytes = Infinity): Promise<void> {
    let received = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        received += chunk.length;
        if (received > maxBytes) return done(invalid(`the archive is larger than the import limit (${Math.round(maxBytes / 1e6)} MB)`));
        onBytes?.(received);
        done(null, chunk);
      },
    });
    const extract = tar.extract();
    const feeding = pipeline(source, counter, extract);
    feeding.catch(() => undefined); // reported through the iterator below
    let n = 0;
    try {
      for await (const entry of extract) {
        const h = entry.header;
        const key = archiveKey(h.name);
        if (++n > MAX_OUTER_ENTRIES) throw invalid(`the archive has more than ${MAX_OUTER_ENTRIES} entries`);
        if (key === null || key === '') {
          entry.resume();
          continue;
        }
        if (h.type === 'file' || h.type === 'contiguous-file') {
          const file = path.join(this.dir, String(this.files.size));
          const hash = createHash('sha256');
          // Synchronous writes of each chunk as it comes: far cheaper than a thread-pool round
          // trip per chunk, and each is short.
          const fd = fs.openSync(file, 'wx', 0o600);
          let size = 0;
          try {
            for await (const chunk of entry as AsyncIterable<Buffer>) {
              hash.update(chunk);
              size += chunk.length;
              let off = 0;
              while (off < chunk.length) off += fs.writeSync(fd, chunk, off, chunk.length - off);
            }
          } finally {
            fs.closeSync(fd);
          }
          this.files.set(key, { file, size, sha256: hash.digest('hex') });
          this.links.delete(key);
        } else if ((h.type === 'symlink' || h.type === 'link') && h.linkname) {
          // docker save (Docker >= 25) names its layers by links into blobs/.
          const target = h.type === 'symlink' ? path.posix.join(path.posix.dirname(key), h.linkname) : h.linkname;
          const resolved = archiveKey(target.replace(/^\/+/, ''));
          if (resolved !== null) this.links.set(key, resolved);
          entry.resume();
        } else {
          entry.resume();
        }
      }
      await feeding;
    } catch (e) {
      throw archiveError(e, 'the archive');
    }
    if (received === 0) throw invalid('the archive is empty');
  }

  /** The spooled file of an archive path, following the archive's own links (a few hops). */
  lookup(name: string): SpooledFile | null {
    let key = archiveKey(name);
    for (let hops = 0; key !== null && hops < 8; hops++) {
      const f = this.files.get(key);
      if (f) return f;
      key = this.links.get(key) ?? null;
    }
    return null;
  }

  has(name: string) {
    return this.lookup(name) !== null;
  }

  async json(name: string, what: string): Promise<unknown> {
    const f = this.lookup(name);
    if (!f) throw invalid(`${what} "${name}" is missing from the archive`);
    if (f.size > MAX_JSON_BYTES) throw invalid(`${what} "${name}" is too large (${f.size} bytes)`);
    try {
      return JSON.parse(await readFile(f.file, 'utf8'));
    } catch {
      throw invalid(`${what} "${name}" is not valid JSON`);
    }
  }

  blob(digest: unknown, what: string): SpooledFile & { name: string } {
    const m = typeof digest === 'string' ? DIGEST.exec(digest) : null;
    if (!m) throw invalid(`${what}: unsupported or malformed digest ${JSON.stringify(digest)}`);
    const name = `blobs/sha256/${m[1]}`;
    const f = this.lookup(name);
    if (!f) throw invalid(`${what} ${digest} is missing from the archive`);
    if (f.sha256 !== m[1]) throw invalid(`${what} ${digest} does not match its content (sha256 ${f.sha256})`);
    return { ...f, name: digest as string };
  }

  /** Finds the image in the archive: its layers in order and its config. */
  async describe(): Promise<ImageDescription> {
    if (this.has('manifest.json')) return this.describeDocker();
    if (this.has('index.json')) return this.describeOci();
    throw invalid('not an image archive: neither manifest.json (docker save) nor index.json (OCI layout) is in it');
  }

  private async describeDocker(): Promise<ImageDescription> {
    const manifest = await this.json('manifest.json', 'the manifest');
    if (!Array.isArray(manifest) || manifest.length === 0) throw invalid('manifest.json names no image');
    const m = manifest[0] as { Config?: unknown; Layers?: unknown; RepoTags?: unknown };
    if (typeof m.Config !== 'string') throw invalid('manifest.json: the image has no Config');
    if (!Array.isArray(m.Layers) || m.Layers.some((l) => typeof l !== 'string')) throw invalid('manifest.json: Layers must be a list of paths');
    const config = await this.json(m.Config, 'the image config');
    const layers: ImageLayerRef[] = (m.Layers as string[]).map((name, i) => {
      const f = this.lookup(name);
      if (!f) throw invalid(`layer ${i + 1} "${name}" named by manifest.json is missing from the archive`);
      const digest = /^blobs\/sha256\/([a-f0-9]{64})$/.exec(archiveKey(name) ?? '');
      if (digest && digest[1] !== f.sha256) throw invalid(`layer ${i + 1} "${name}" does not match its digest`);
      return { name, file: f.file, size: f.size };
    });
    const configDigest = this.lookup(m.Config)?.sha256;
    return {
      format: 'docker', layers, config: configDefaults(config), configDigest: configDigest ? `sha256:${configDigest}` : null,
      repoTags: Array.isArray(m.RepoTags) ? m.RepoTags.filter((t): t is string => typeof t === 'string') : [],
    };
  }

  private async describeOci(): Promise<ImageDescription> {
    if (!this.has('oci-layout')) throw invalid('OCI layout: oci-layout is missing from the archive');
    let node = (await this.json('index.json', 'the OCI index')) as Record<string, unknown>;
    const repoTags: string[] = [];
    // An index (or a manifest list) points at manifests: take linux/amd64, else the first.
    for (let depth = 0; depth < 4; depth++) {
      const manifests = node.manifests;
      if (!Array.isArray(manifests)) break;
      if (manifests.length === 0) throw invalid('OCI index names no manifest');
      const pick =
        manifests.find((d: any) => d?.platform?.os === 'linux' && d?.platform?.architecture === 'amd64') ?? manifests[0];
      const ref = (pick as any)?.annotations?.['org.opencontainers.image.ref.name'];
      if (typeof ref === 'string' && repoTags.length === 0) repoTags.push(ref);
      const blob = this.blob((pick as any)?.digest, 'manifest');
      if (blob.size > MAX_JSON_BYTES) throw invalid(`manifest ${blob.name} is too large`);
      try {
        node = JSON.parse(await readFile(blob.file, 'utf8'));
      } catch {
        throw invalid(`manifest ${blob.name} is not valid JSON`);
      }
    }
    const cfgRef = (node.config as any)?.digest;
    if (!Array.isArray(node.layers)) throw invalid('OCI manifest has no layers list');
    const cfgBlob = this.blob(cfgRef, 'image config');
    let config: unknown;
    try {
      config = JSON.parse(await readFile(cfgBlob.file, 'utf8'));
    } catch {
      throw invalid(`image config ${cfgBlob.name} is not valid JSON`);
    }
    const layers = (node.layers as any[]).map((l, i) => {
      const b = this.blob(l?.digest, `layer ${i + 1}`);
      return { name: b.name, file: b.file, size: b.size };
    });
    return { format: 'oci', layers, config: configDefaults(config), configDigest: cfgBlob.name, repoTags };
  }
}

/** The defaults an image's config gives its processes (Env, WorkingDir, User, Entrypoint, Cmd). */
export function configDefaults(raw: unknown): ImageConfigDefaults {
  const c = ((raw as any)?.config ?? (raw as any)?.Config ?? {}) as Record<string, unknown>;
  const env: Record<string, string> = {};
  if (Array.isArray(c.Env)) {
    for (const e of c.Env) {
      if (typeof e !== 'string') continue;
      const eq = e.indexOf('=');
      if (eq <= 0) continue;
      env[e.slice(0, eq)] = e.slice(eq + 1);
    }
  }
  const strList = (v: unknown) => (Array.isArray(v) && v.every((s) => typeof s === 'string') ? (v as string[]) : null);
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : null);
  return { env, workdir: str(c.WorkingDir), user: str(c.User), entrypoint: strList(c.Entrypoint), cmd: strList(c.Cmd) };
}

/** An error from a stream of the archive, as one line that says where. */
export function archiveError(e: unknown, where: string): Error {
  if (e instanceof NestboxError) return e;
  const m = e instanceof Error ? e.message : String(e);
  return invalid(`${where} is not a valid tar stream (${m})`);
}
