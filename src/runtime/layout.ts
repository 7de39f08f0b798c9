import path from 'node:path';
import type { RuntimeConfig } from './config.ts';

/** Where one sandbox's pieces live on the node. */
export function sandboxPaths(cfg: RuntimeConfig, id: string) {
  const dir = path.join(cfg.dataDir, 'sandboxes', id);
  return {
    dir, // also the OCI bundle: config.json lives here
    record: path.join(dir, 'sandbox.json'),
    upper: path.join(dir, 'layer/upper'),
    work: path.join(dir, 'layer/work'),
    rootfs: path.join(dir, 'rootfs'),
    socketDir: path.join(dir, 'run'),
    socket: path.join(dir, 'run/init.sock'),
    runcLog: path.join(dir, 'runc.log'),
    criuWork: path.join(dir, 'criu-work'),
  };
}

/** A snapshot: CRIU images (memory) and the upper layer (files) of a paused sandbox. */
export function snapshotPaths(cfg: RuntimeConfig, id: string, dirName = id) {
  const dir = path.join(cfg.snapshotDir, dirName);
  return {
    dir,
    meta: path.join(dir, 'snapshot.json'),
    images: path.join(dir, 'checkpoint'),
    upper: path.join(dir, 'upper'),
  };
}

export function templateRootfs(cfg: RuntimeConfig, template: string) {
  return path.join(cfg.templatesDir, template, 'rootfs');
}
