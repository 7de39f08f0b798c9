import { constants } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../runtime/command.ts';
import type { RuntimeConfig } from '../runtime/config.ts';

export interface PreflightProblem {
  what: string;
  fix: string;
}

/**
 * Checks that this host can run sandboxes, before anything is touched. Each problem says what
 * to do, so the operator sees a sentence instead of a stack trace from deep in runc or CRIU.
 */
export async function preflight(cfg: RuntimeConfig, templates: string[] = ['base']): Promise<PreflightProblem[]> {
  const problems: PreflightProblem[] = [];
  if (process.platform !== 'linux') {
    return [{ what: 'Nestbox runs sandboxes on Linux only', fix: 'run the node agent on a Linux host' }];
  }
  if (process.getuid?.() !== 0) {
    problems.push({ what: 'the node agent is not running as root', fix: 'run it as root (e.g. `sudo make up`): it mounts overlays, creates namespaces and runs runc' });
  }
  const cgroupOk = await access('/sys/fs/cgroup/cgroup.controllers').then(() => true, () =>
    access('/sys/fs/cgroup/memory').then(() => true, () => false));
  if (!cgroupOk) {
    problems.push({ what: 'no cgroup file system is mounted at /sys/fs/cgroup', fix: 'boot with cgroups enabled (cgroup v2 or v1 with the memory, cpu and pids controllers)' });
  }
  const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (!/\boverlay\b/.test(filesystems)) {
    problems.push({ what: 'the kernel has no overlay file system', fix: 'load it with `modprobe overlay`' });
  }
  if ((await run(['runc', '--version'], { allowFailure: true }).catch(() => null))?.code !== 0) {
    problems.push({ what: 'runc is not installed', fix: 'run `make setup` (or `apt-get install runc`)' });
  }
  const criu = path.join(cfg.criuBinDir, 'criu');
  const check = await run([criu, 'check'], { allowFailure: true }).catch(() => null);
  if (!check) {
    problems.push({ what: `CRIU is not installed at ${criu}`, fix: 'run `make setup`, which installs CRIU 4.x into a private prefix' });
  } else if (!/Looks good/.test(check.stdout + check.stderr)) {
    problems.push({ what: `\`criu check\` fails: ${(check.stderr || check.stdout).trim().split('\n').slice(-2).join(' ')}`, fix: 'pause with memory needs a kernel CRIU supports; run `make setup` again, or use a newer kernel' });
  }
  for (const tool of ['iptables', 'ip6tables']) {
    const r = await run([tool, '--version'], { allowFailure: true }).catch(() => null);
    if (r?.code !== 0) problems.push({ what: `${tool} is not installed`, fix: 'run `make setup` (or `apt-get install iptables`)' });
  }
  // Every sandbox's disk is an ext4 image on a loop device.
  if ((await run(['mkfs.ext4', '-V'], { allowFailure: true }).catch(() => null))?.code !== 0) {
    problems.push({ what: 'mkfs.ext4 is not installed (sandbox disks are ext4 images)', fix: 'run `make setup` (or `apt-get install e2fsprogs`)' });
  }
  if (!/\bext4\b/.test(filesystems)) {
    problems.push({ what: 'the kernel has no ext4 file system (sandbox disks are ext4 images)', fix: 'load it with `modprobe ext4`' });
  }
  if (!(await access('/dev/loop-control').then(() => true, () => false))) {
    problems.push({ what: 'there is no /dev/loop-control (sandbox disks are loop-mounted images)', fix: 'load the loop module (`modprobe loop`); in a container, give the node agent access to loop devices' });
  }
  if (!(await access(cfg.initBinary).then(() => true, () => false))) {
    problems.push({ what: `the sandbox init is not built (${cfg.initBinary})`, fix: 'run `make setup` (it builds sandbox-init with cargo)' });
  }
  if (!(await access(cfg.networkHook, constants.X_OK).then(() => true, () => false))) {
    problems.push({ what: `the network hook is not built (${cfg.networkHook})`, fix: 'run `make setup` (it builds sandbox-init with cargo)' });
  }
  if (!(await access(cfg.bindHook, constants.X_OK).then(() => true, () => false))) {
    problems.push({ what: `the bind hook is not built (${cfg.bindHook})`, fix: 'run `make setup` (it builds sandbox-init with cargo)' });
  }
  // runc starts each sandbox as its mapped root, which must reach the sandbox's root file system
  // (in the data directory) and, on resume, its checkpoint (in the snapshot directory).
  for (const [name, variable, dir] of [
    ['data directory', 'NESTBOX_DATA_DIR', cfg.dataDir], ['snapshot directory', 'NESTBOX_SNAPSHOT_DIR', cfg.snapshotDir],
  ] as const) {
    const blocked = await untraversable(dir, cfg.uidShift, cfg.uidShift);
    if (blocked) {
      problems.push({
        what: `the ${name} ${dir} is out of reach of the sandboxes' root (host uid ${cfg.uidShift}): ${blocked.dir} is mode ${blocked.mode.toString(8).padStart(4, '0')} (owner ${blocked.uid})`,
        fix: `let every user traverse it (\`chmod o+x ${blocked.dir}\`), or set ${variable} (or NESTBOX_HOME) to a directory whose parents every user can traverse, such as /var/lib/nestbox`,
      });
    }
  }
  for (const t of templates) {
    if (!(await access(path.join(cfg.templatesDir, t, 'rootfs')).then(() => true, () => false))) {
      problems.push({ what: `template "${t}" is not built in ${cfg.templatesDir}`, fix: `run \`make setup\` (it builds the ${t} template with debootstrap)` });
    }
  }
  return problems;
}

/**
 * The first existing directory on the way to `dir` (itself included) that uid:gid may not search
 * (no x for it as owner, group or other), or null. Missing parts are made later with mode 0755.
 */
export async function untraversable(dir: string, uid: number, gid: number): Promise<{ dir: string; mode: number; uid: number } | null> {
  let at = '/';
  for (const name of ['', ...path.resolve(dir).split('/').filter(Boolean)]) {
    at = path.join(at, name);
    const st = await stat(at).catch(() => null);
    if (!st) return null;
    if (!st.isDirectory()) return null; // not ours to judge here: the agent's own start reports it
    const mode = st.mode & 0o777;
    const bit = st.uid === uid ? 0o100 : st.gid === gid ? 0o010 : 0o001;
    if ((mode & bit) === 0) return { dir: at, mode, uid: st.uid };
  }
  return null;
}

export function formatProblems(problems: PreflightProblem[]): string {
  return ['This host cannot run Nestbox sandboxes yet:', ...problems.map((p) => `  - ${p.what}: ${p.fix}.`)].join('\n');
}
