// A template in the form it travels between nodes (template-distribution.ts): one tar of its
// directory (rootfs and template.json; names sorted, numeric owners), described by a manifest
// (its sha256 and size) that the store writes after it. A node unpacks it into a staging
// directory beside its templates, only once its bytes match the manifest, and renames it into
// place whole: a template is on a node complete or not at all.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import { run } from './command.ts';
import { exists } from './fs-util.ts';
import { hashing } from './snapshot-store.ts';

export interface TemplateManifest {
  version: 1;
  name: string;
  sha256: string;
  size: number;
  publishedAt: string;
}

/** A name the stores may use as a key or a directory name (a template's name). */
export function assertTemplateName(name: string): void {
  if (!TEMPLATE_NAME_PATTERN.test(name)) throw new Error(`invalid template name "${name}"`);
}

/** A stored manifest of template `name`, checked (a malformed one is an error, not a template). */
export function parseTemplateManifest(text: string, name: string): TemplateManifest {
  let m: TemplateManifest;
  try {
    m = JSON.parse(text) as TemplateManifest;
  } catch {
    throw new Error(`template ${name}: malformed manifest in the store (not JSON)`);
  }
  if (m?.version !== 1 || m.name !== name || !/^[0-9a-f]{64}$/.test(m.sha256) || !Number.isSafeInteger(m.size)) {
    throw new Error(`template ${name}: malformed manifest in the store`);
  }
  return m;
}

export interface PackedTemplate {
  /** The tar, to be read to its end by the store (hashed as it is read). */
  body: Readable;
  /** Settles when tar is done (rejects when it failed: the bytes read are not the template). */
  done: Promise<void>;
  /** The manifest of what `body` gave; only once it was read to its end and `done` resolved. */
  manifest(): TemplateManifest;
}

/** The node's template `name` as one tar stream; an error when the node does not have it. */
export async function packTemplate(templatesDir: string, name: string): Promise<PackedTemplate> {
  assertTemplateName(name);
  const dir = path.join(templatesDir, name);
  if (!(await exists(path.join(dir, 'rootfs')))) throw new Error(`template ${name} is not on this node`);
  const members = ['rootfs', ...((await exists(path.join(dir, 'template.json'))) ? ['template.json'] : [])];
  const child = spawn('tar', ['-C', dir, '--sort=name', '--numeric-owner', '--format=gnu', '--sparse', '-cf', '-', '--', ...members], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar of template ${name} failed (${code}): ${stderr.trim()}`))));
  });
  done.catch(() => undefined);
  const h = hashing();
  const body = child.stdout.pipe(h);
  child.stdout.on('error', (e) => h.destroy(e));
  // A store that gave up reading (an upload or a write failed) must not leave tar blocked on its pipe.
  h.on('close', () => {
    if (!h.readableEnded && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    body, done,
    manifest: () => ({ version: 1, name, ...h.digest(), publishedAt: new Date().toISOString() }),
  };
}

/** Written into a templates directory's staging and trash directories: the host and process working on them. */
export const STAGING_OWNER_FILE = '.nestbox-owner.json';

/**
 * Unpacks the tar `body` of template `name` into `templatesDir`: copied into a staging directory
 * there, checked against `manifest`, unpacked with the owners and modes it was published with,
 * checked to hold a template and nothing else, then renamed into place. Anything wrong leaves
 * nothing behind (the staging directory goes) and is an error.
 */
export async function unpackTemplate(templatesDir: string, name: string, manifest: TemplateManifest, body: Readable): Promise<void> {
  assertTemplateName(name);
  const staging = path.join(templatesDir, `.fetch-${name}-${randomBytes(4).toString('hex')}`);
  try {
    await mkdir(templatesDir, { recursive: true, mode: 0o755 });
    await mkdir(staging, { mode: 0o755 });
    // Who fetches: a node that dies mid-fetch leaves this staging to its next start (removeAbandoned).
    await writeFile(path.join(staging, STAGING_OWNER_FILE), JSON.stringify({ host: os.hostname(), pid: process.pid }));
  } catch (e) {
    body.destroy();
    throw e;
  }
  try {
    const file = path.join(staging, '.template.tar');
    const h = hashing();
    await pipeline(body, h, createWriteStream(file, { mode: 0o600 }));
    const got = h.digest();
    if (got.sha256 !== manifest.sha256 || got.size !== manifest.size) {
      throw new Error(`template ${name} in the store fails its checksum (manifest ${manifest.sha256.slice(0, 12)}…, got ${got.sha256.slice(0, 12)}…)`);
    }
    // Owners and modes as published: the rootfs belongs to the sandboxes' mapped range.
    await run(['tar', '-C', staging, '--numeric-owner', '--same-owner', '--same-permissions', '-xf', file]);
    await rm(file, { force: true });
    await rm(path.join(staging, STAGING_OWNER_FILE), { force: true });
    const entries = (await readdir(staging)).filter((e) => e !== 'rootfs' && e !== 'template.json');
    if (entries.length) throw new Error(`template ${name} in the store holds more than a template: ${entries.join(', ')}`);
    if (!(await lstat(path.join(staging, 'rootfs')).catch(() => null))?.isDirectory()) throw new Error(`template ${name} in the store has no rootfs directory`);
    await rename(staging, path.join(templatesDir, name)).catch(async (e: NodeJS.ErrnoException) => {
      // Put there meanwhile by a node sharing the templates directory: the template is here.
      if ((e.code === 'ENOTEMPTY' || e.code === 'EEXIST') && (await exists(path.join(templatesDir, name, 'rootfs')))) {
        await rm(staging, { recursive: true, force: true });
        return;
      }
      throw e;
    });
  } catch (e) {
    body.destroy();
    await rm(staging, { recursive: true, force: true });
    throw e;
  }
}
