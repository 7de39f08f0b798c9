// Warm captures of templates with a start command: a sandbox of the template started, its
// ready command passed, then dumped by CRIU. A sandbox created from such a template is restored
// from the capture, so its started process is already running. One capture per template
// version and node, under <dataDir>/warm/<template>@<version>/ (the files of a snapshot).
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { RuntimeConfig } from './config.ts';
import { exists } from './fs-util.ts';
import { snapshotFiles, type SnapshotFiles } from './layout.ts';

export class WarmCaptures {
  private readonly root: string;

  constructor(cfg: Pick<RuntimeConfig, 'dataDir'>) {
    this.root = path.join(cfg.dataDir, 'warm');
  }

  private dir(template: string, version: string) {
    return path.join(this.root, `${template}@${version}`);
  }

  /** The complete capture of this template version, or null. */
  async find(template: string, version: string): Promise<SnapshotFiles | null> {
    const files = snapshotFiles(this.dir(template, version));
    return (await exists(files.meta)) ? files : null;
  }

  /** A staging directory for a new capture (0711: the sandbox's mapped root reads its images). */
  async stage(template: string, version: string): Promise<SnapshotFiles> {
    await mkdir(this.root, { recursive: true, mode: 0o711 });
    const dir = `${this.dir(template, version)}.partial-${process.pid}-${Date.now()}`;
    await mkdir(dir, { mode: 0o711 });
    return snapshotFiles(dir);
  }

  /** Puts a staged capture in place and removes the captures of the template's other versions. */
  async commit(template: string, version: string, staged: SnapshotFiles): Promise<SnapshotFiles> {
    const final = this.dir(template, version);
    await rm(final, { recursive: true, force: true });
    await rename(staged.dir, final);
    await this.forget(template, version);
    return snapshotFiles(final);
  }

  /** Removes the captures (and staging left by a crash) of a template, except `keep`'s. */
  async forget(template: string, keepVersion?: string): Promise<void> {
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (!name.startsWith(`${template}@`)) continue;
      if (keepVersion && name === `${template}@${keepVersion}`) continue;
      await rm(path.join(this.root, name), { recursive: true, force: true });
    }
  }

  /** At agent start: staging directories of captures cut short. */
  async removeStaging(): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (!name.includes('.partial-')) continue;
      await rm(path.join(this.root, name), { recursive: true, force: true });
      removed.push(name);
    }
    return removed;
  }
}
