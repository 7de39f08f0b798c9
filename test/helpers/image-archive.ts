// Builds image archives in tests: layer tars from entry lists, then a `docker save` tarball or an
// OCI image layout tarball around them. Nothing here is trusted by the importer.
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

export interface LayerEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
}

/** A tar of the given entries (in order), as bytes. */
export async function tarOf(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const body = type === 'file' ? Buffer.from(e.content ?? '') : undefined;
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        {
          name: e.name, type, mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644), uid: e.uid ?? 0, gid: e.gid ?? 0,
          linkname: e.linkname, size: body?.length ?? 0, mtime: new Date(1_700_000_000_000),
          devmajor: 1, devminor: 3,
        },
        body ?? Buffer.alloc(0),
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export interface ImageSpec {
  layers: Buffer[]; // layer tars (maybe gzipped)
  env?: string[];
  user?: string;
  workdir?: string;
  cmd?: string[];
  entrypoint?: string[];
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function configOf(spec: ImageSpec) {
  return Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux',
    config: { Env: spec.env, User: spec.user, WorkingDir: spec.workdir, Cmd: spec.cmd, Entrypoint: spec.entrypoint },
    rootfs: { type: 'layers', diff_ids: [] },
  }));
}

/** A `docker save` archive: manifest.json (last, as docker writes it), config, <n>/layer.tar. */
export async function dockerSaveArchive(spec: ImageSpec, opts: { omitLayer?: number } = {}): Promise<Buffer> {
  const config = configOf(spec);
  const configName = `${sha(config)}.json`;
  const layerNames = spec.layers.map((l, i) => `${sha(l).slice(0, 12)}${i}/layer.tar`);
  const entries: LayerEntry[] = [{ name: configName, content: config }];
  spec.layers.forEach((l, i) => {
    if (opts.omitLayer === i) return;
    entries.push({ name: layerNames[i]!.split('/')[0]!, type: 'directory' });
    entries.push({ name: layerNames[i]!, content: l });
  });
  entries.push({ name: 'manifest.json', content: JSON.stringify([{ Config: configName, RepoTags: ['test/image:latest'], Layers: layerNames }]) });
  return tarOf(entries);
}

/** An OCI image layout tarball: oci-layout, index.json, blobs/sha256/<digest>. */
export async function ociLayoutArchive(spec: ImageSpec): Promise<Buffer> {
  const config = configOf(spec);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
    layers: spec.layers.map((l) => ({
      mediaType: l[0] === 0x1f ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar',
      digest: `sha256:${sha(l)}`, size: l.length,
    })),
  }));
  const index = {
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length,
      annotations: { 'org.opencontainers.image.ref.name': 'latest' },
    }],
  };
  const blobs = [config, manifest, ...spec.layers];
  const entries: LayerEntry[] = [
    { name: 'oci-layout', content: JSON.stringify({ imageLayoutVersion: '1.0.0' }) },
    { name: 'index.json', content: JSON.stringify(index) },
    { name: 'blobs', type: 'directory' },
    { name: 'blobs/sha256', type: 'directory' },
  ];
  const seen = new Set<string>();
  for (const b of blobs) {
    const d = sha(b);
    if (seen.has(d)) continue;
    seen.add(d);
    entries.push({ name: `blobs/sha256/${d}`, content: b });
  }
  return tarOf(entries);
}

export const gzip = (b: Buffer) => gzipSync(b);
