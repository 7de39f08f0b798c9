import { access, readFile } from 'node:fs/promises';
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
  for (const t of templates) {
    if (!(await access(path.join(cfg.templatesDir, t, 'rootfs')).then(() => true, () => false))) {
      problems.push({ what: `template "${t}" is not built in ${cfg.templatesDir}`, fix: `run \`make setup\` (it builds the ${t} template with debootstrap)` });
    }
  }
  return problems;
}

export function formatProblems(problems: PreflightProblem[]): string {
  return ['This host cannot run Nestbox sandboxes yet:', ...problems.map((p) => `  - ${p.what}: ${p.fix}.`)].join('\n');
}
