// Raw runc containers for the benchmarks' physical limits: the same template, limits and init
// as a sandbox, without Nestbox (no disk, no network, no agent).
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../src/runtime/command.ts';
import type { RuntimeConfig } from '../src/runtime/config.ts';
import { isMountPoint, unmount } from '../src/runtime/fs-util.ts';
import { templateRootfs } from '../src/runtime/layout.ts';
import { buildOciSpec } from '../src/runtime/oci-spec.ts';
import type { Runc } from '../src/runtime/runc.ts';
import { TEST_ROOT } from '../test/helpers/agent-harness.ts';

/** A raw runc container on the same template and limits as a sandbox, without Nestbox. */
export async function rawContainer(cfg: RuntimeConfig, id: string, args: string[]) {
  const dir = path.join(TEST_ROOT, 'raw', id);
  await mkdir(path.join(dir, 'upper'), { recursive: true, mode: 0o711 });
  await mkdir(path.join(dir, 'work'), { recursive: true });
  await mkdir(path.join(dir, 'rootfs'), { recursive: true });
  await mkdir(path.join(dir, 'run'), { recursive: true });
  await mkdir(path.join(dir, 'etc'), { recursive: true });
  for (const f of ['hosts', 'hostname', 'resolv.conf', 'env.json']) await writeFile(path.join(dir, 'etc', f), '');
  await run(['chown', `${cfg.uidShift}:${cfg.uidShift}`, path.join(dir, 'upper'), path.join(dir, 'run')]);
  await run(['mount', '-t', 'overlay', 'overlay', '-o',
    `lowerdir=${templateRootfs(cfg, 'base')},upperdir=${dir}/upper,workdir=${dir}/work`, `${dir}/rootfs`]);
  const spec = buildOciSpec({
    sandboxId: id, rootfs: `${dir}/rootfs`, initBinary: cfg.initBinary, socketDir: `${dir}/run`, etcDir: `${dir}/etc`,
    networkHook: { path: '/bin/true', args: ['true'], timeout: 10 }, bindHook: cfg.bindHook, criuConfig: `${dir}/criu.conf`,
    resources: { cpuCount: 2, memoryMB: 1024, pidsLimit: 512 }, uidShift: cfg.uidShift, uidRange: cfg.uidRange,
  }) as any;
  delete spec.hooks;
  delete spec.annotations;
  spec.process.args = args;
  spec.linux.cgroupsPath = `/nestbox-raw/${id}`;
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(spec));
  return {
    dir,
    cleanup: async (runc: Runc) => {
      await runc.destroy(id).catch(() => undefined);
      await run(['umount', `${dir}/rootfs`], { allowFailure: true });
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A run that crashed may have left raw containers and mounts behind. */
export async function cleanStaleRaw(runc: Runc) {
  const rawRoot = path.join(TEST_ROOT, 'raw');
  for (const id of await readdir(rawRoot).catch(() => [] as string[])) {
    await runc.destroy(id).catch(() => undefined);
    // a crashed run may have stacked several mounts here
    while (await isMountPoint(path.join(rawRoot, id, 'rootfs'))) await unmount(path.join(rawRoot, id, 'rootfs'));
  }
  await rm(rawRoot, { recursive: true, force: true });
}

