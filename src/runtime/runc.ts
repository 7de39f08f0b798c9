import { constants, openSync } from 'node:fs';
import { access, readFile, rename, rm, rmdir, unlink, writeFile } from 'node:fs/promises';
import { Socket } from 'node:net';
import path from 'node:path';
import { freeze, freezeForDump, freezerOf, thaw, type Freezer } from './cgroup-freezer.ts';
import { exists, removeTree, unmount } from './fs-util.ts';
import { run } from './command.ts';
import { adoptedState, cgroupNameOf, isOwnCgroup, type Adoption } from './container-adoption.ts';
import { retried, waitUntil } from './retry.ts';

export interface ContainerState {
  id: string;
  pid: number;
  status: 'created' | 'running' | 'pausing' | 'paused' | 'stopped';
  bundle: string;
}

export interface ContainerStats {
  cpuNs: number;
  memoryBytes: number;
  memoryLimitBytes: number;
  pids: number;
}

/** How often a start that waits on the exec fifo checks that the container's init lives. */
const START_CHECK_MS = 100;

/** `runc list` tried again after these (a delete racing it passes in a moment). */
const LIST_RETRY_DELAYS_MS = [10, 20, 30];

/** Thin wrapper over the runc binary, with a private state root per agent. */
export class Runc {
  constructor(
    readonly root: string,
    private readonly criuBinDir: string,
  ) {}

  private env(): NodeJS.ProcessEnv {
    return { ...process.env, PATH: `${this.criuBinDir}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` };
  }

  /**
   * run -d and restore -d hand their stdio to the container's init, and CRIU refuses to
   * checkpoint stdio that leads outside the container: so these get /dev/null, and runc's own
   * errors are read from its log file.
   */
  private async detached(args: string[], logFile: string, timeoutMs = 60_000, niceness = 0): Promise<void> {
    // runc dies with the agent (parent-death signal; started by the agent's spawner, which exits
    // when the agent goes): a checkpoint or restore cut short by an agent crash is then
    // abandoned by CRIU (which resumes the tasks) instead of finishing unseen while the
    // restarted agent repairs the same directories.
    const runc = ['runc', '--root', this.root, '--log', logFile, '--log-format', 'json', ...args];
    const r = await run([...(niceness ? ['nice', '-n', String(niceness)] : []), 'setpriv', '--pdeathsig', 'KILL', '--', ...runc], { env: this.env(), timeoutMs, allowFailure: true, capture: false });
    if (r.code !== 0) throw new Error(await lastLogError(logFile));
  }

  async runDetached(id: string, bundle: string, logFile: string) {
    // No session keyring per sandbox: the kernel allows 200 keys per uid and every sandbox's
    // root is the same host uid, so a keyring each would cap a node at 200 sandboxes. The
    // seccomp profile refuses the key system calls, so the sandbox cannot use the inherited one.
    await this.detached(['run', '-d', '--no-new-keyring', '--bundle', bundle, id], logFile);
  }

  /**
   * A container made ahead of its start (`runc create`): its namespaces, mounts, cgroups and
   * hooks are done, and runc's init waits on the exec fifo to run the spec's process. With
   * `niceness`, runc and its init run at that nice value (the init keeps it until it is reset).
   */
  async create(id: string, bundle: string, logFile: string, opts: { niceness?: number } = {}) {
    await this.detached(['create', '--no-new-keyring', '--bundle', bundle, id], logFile, 60_000, opts.niceness ?? 0);
  }

  /**
   * Starts a created container: what `runc start` does (runc's init waits to open the exec fifo
   * for writing, writes a byte once it has, and runs the spec's process; `runc start` reads the
   * byte and removes the fifo), in this process: a runc process is 10 ms of a 2-core host, most
   * of what a start costs. The fifo is opened for reading and writing, so the open never waits
   * and no end-of-file comes before the byte; the read is a pipe of the event loop's, which a
   * check of the init's pid (every START_CHECK_MS) ends if the init is gone: nothing waits
   * forever, even for a fifo removed meanwhile. A fifo that is not there (a runc that works
   * otherwise) falls back to `runc start`.
   */
  async start(id: string) {
    const fifo = path.join(this.root, id, 'exec.fifo');
    const saved = await this.savedState(id);
    let fd: number;
    try {
      fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      const r = await run(['runc', '--root', this.root, 'start', id], { allowFailure: true });
      if (r.code !== 0) throw new Error(`runc start ${id}: ${r.stderr.trim()}`);
      return;
    }
    const pipe = new Socket({ fd, readable: true, writable: false });
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        pipe.once('data', () => resolve());
        pipe.once('error', reject);
        const check = async () => {
          const st = await this.statusOf(id, saved).catch(() => null);
          if (st?.status === 'stopped' || st === null) reject(new Error(`container ${id} could not be started: its init is gone`));
          else timer = setTimeout(check, START_CHECK_MS);
        };
        timer = setTimeout(check, START_CHECK_MS);
      });
    } finally {
      clearTimeout(timer);
      pipe.destroy();
    }
    await unlink(fifo);
  }

  /**
   * Takes a container of `from` (another root of this node: a pool's) into this root under the
   * sandbox's id: runc's state rewritten (adoptedState), its state directory moved in last, so
   * this root sees it whole or not at all. Its cgroups keep their names (cgroup v2 cannot rename
   * them): runc finds them through its state, as everything else does.
   */
  async adopt(from: Runc, fromId: string, adoption: Adoption) {
    const saved = await from.savedState(fromId);
    if (!saved) throw new Error(`container ${fromId} is not in ${from.root}`);
    const stateDir = path.join(from.root, fromId);
    await writeFile(path.join(stateDir, 'state.json.new'), JSON.stringify(adoptedState(saved, adoption)), { mode: 0o600 });
    await rename(path.join(stateDir, 'state.json.new'), path.join(stateDir, 'state.json'));
    await rename(stateDir, path.join(this.root, adoption.id));
  }

  /** With `leaveRunning`, the container goes on after the dump (a snapshot or fork of it). */
  async checkpoint(id: string, imagePath: string, workPath: string, logFile: string, opts: { leaveRunning?: boolean } = {}) {
    await this.detached(
      ['checkpoint', '--image-path', imagePath, '--work-path', workPath, '--tcp-established', '--file-locks',
        ...(opts.leaveRunning ? ['--leave-running'] : []), id],
      logFile,
    );
  }

  /**
   * Freezes every process of the container through its cgroup's freezer (where runc's state
   * file says it is) and resolves once all are frozen; `thaw` lets them go on. `forDump`: at a
   * moment CRIU can stop every task (none waiting for a vfork()ed child: see freezeForDump).
   */
  async freeze(id: string, opts: { forDump?: boolean } = {}) {
    const f = await this.freezer(id);
    if (!f) throw new Error(`container ${id} has no freezer on record`);
    await (opts.forDump ? freezeForDump(f) : freeze(f));
  }

  async restore(id: string, bundle: string, imagePath: string, workPath: string, logFile: string) {
    await this.detached(
      ['restore', '-d', '--image-path', imagePath, '--work-path', workPath, '--tcp-established', '--file-locks',
        '--bundle', bundle, id],
      logFile,
    );
  }

  /** Thaws a container left frozen (a dump abandoned half-way); nothing when it is gone. */
  async thaw(id: string) {
    const f = await this.freezer(id);
    if (f) await thaw(f);
  }

  /** The container's freezer, from the cgroup paths in runc's state file; null: no container. */
  private async freezer(id: string): Promise<Freezer | null> {
    const saved = await this.savedState(id);
    return saved ? freezerOf(saved.cgroup_paths as Record<string, unknown> | undefined) : null;
  }

  /** runc's state file of the container (written by runc, in the agent's own root); null: none. */
  private async savedState(id: string): Promise<Record<string, unknown> | null> {
    try {
      return JSON.parse(await readFile(path.join(this.root, id, 'state.json'), 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async state(id: string): Promise<ContainerState | null> {
    const r = await run(['runc', '--root', this.root, 'state', id], { allowFailure: true });
    if (r.code !== 0) return null;
    return JSON.parse(r.stdout) as ContainerState;
  }

  /**
   * The container's init and whether it runs, read the way runc itself decides it (its state
   * file's init pid and start time against /proc; a zombie is stopped; the exec fifo still
   * there means created), without spawning runc: a kill and a pause ask this first, and a
   * runc process is several ms of a 2-core host. Null: no such container. Never `paused`:
   * sandboxes are frozen only inside an operation that holds their lock.
   */
  async status(id: string): Promise<{ pid: number; status: 'created' | 'running' | 'stopped'; startTime?: string } | null> {
    return this.statusOf(id, await this.savedState(id));
  }

  /** status() of a container whose state file reads `saved`. */
  private async statusOf(id: string, saved: Record<string, unknown> | null): Promise<{ pid: number; status: 'created' | 'running' | 'stopped'; startTime?: string } | null> {
    if (!saved) return null;
    const pid = Number(saved.init_process_pid);
    if (!Number.isSafeInteger(pid) || pid <= 0) return { pid: 0, status: 'stopped' };
    const startTime = String(saved.init_process_start);
    if (!(await isSameProcess(pid, startTime))) return { pid, status: 'stopped' };
    const created = await access(path.join(this.root, id, 'exec.fifo')).then(() => true, () => false);
    return { pid, status: created ? 'created' : 'running', startTime };
  }

  /**
   * The containers of this root. `runc list` fails outright when a container is deleted while
   * it lists (it cannot stat the state directory it just read), and leaves out, with a line on
   * stderr, one whose state it could not load just then: so a failed listing is tried again and
   * then thrown, never taken for an empty root, and callers must not take a container missing
   * from it for one that is gone (see sandbox-inventory.ts). Taking a failed listing for "no
   * containers" once made a node report every sandbox gone, and the reconciler removed them.
   */
  async list(): Promise<ContainerState[]> {
    const r = await retried(() => run(['runc', '--root', this.root, 'list', '--format', 'json']), LIST_RETRY_DELAYS_MS);
    return r.stdout.trim() ? ((JSON.parse(r.stdout) as ContainerState[] | null) ?? []) : [];
  }

  /** Stops and removes the container; succeeds when it is already gone. */
  async destroy(id: string) {
    await this.stop(id);
    await this.remove(id);
  }

  /**
   * Stops the container: once this returns, none of its processes runs. The init is killed
   * here rather than by `runc kill` (one runc process less), with runc's own check that the
   * pid is still its init; the rest of its pid namespace dies with it.
   */
  async stop(id: string) {
    // A restore cut short leaves the rootfs mounted in runc's state directory for CRIU: first
    // of all, so nothing can delete through it.
    await unmount(path.join(this.root, id, 'criu-root'));
    const st = await this.status(id);
    if (st?.status !== 'running' && st?.status !== 'created') return;
    try {
      process.kill(st.pid, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
    await initEnded(st.pid);
  }

  /**
   * Removes a stopped container (its cgroup, runc's state); succeeds when it is already gone.
   * One that still runs is stopped first by `runc delete --force`, which waits in steps of 100 ms.
   */
  async remove(id: string) {
    await unmount(path.join(this.root, id, 'criu-root'));
    // Gone already (a checkpoint's runc destroys what it dumped): no runc process for nothing.
    if (!(await exists(path.join(this.root, id)))) return;
    if (await this.removeStopped(id)) return;
    const r = await run(['runc', '--root', this.root, 'delete', '--force', id], { allowFailure: true });
    if (r.code !== 0 && (await this.state(id)) !== null) {
      throw new Error(`runc delete ${id}: ${r.stderr.trim()}`);
    }
    // runc leaves its state directory behind when the container vanished under it.
    await removeTree(path.join(this.root, id));
  }

  /**
   * What `runc delete` does for a container whose init is dead (its cgroups go, then its state
   * directory; the sandboxes' spec has no poststop hooks), in this process: a kill's runc
   * process was several ms of CPU beside the next create on a 2-core host. False, with nothing
   * changed but cgroups already empty, when it is not that simple (a process or a child cgroup
   * left in a cgroup, a path that is not the container's): `runc delete` sees to it then.
   */
  private async removeStopped(id: string): Promise<boolean> {
    const saved = await this.savedState(id);
    const paths = Object.values((saved?.cgroup_paths ?? {}) as Record<string, unknown>);
    if ((await this.statusOf(id, saved))?.status !== 'stopped' || paths.length === 0) return false;
    const name = cgroupNameOf(saved);
    for (const cgroup of paths) {
      if (!isOwnCgroup(cgroup, name)) return false;
      try {
        await rmdir(cgroup);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return false;
      }
    }
    await rm(path.join(this.root, id), { recursive: true, force: true });
    return true;
  }

  async stats(id: string): Promise<ContainerStats | null> {
    const r = await run(['runc', '--root', this.root, 'events', '--stats', id], { allowFailure: true });
    if (r.code !== 0) return null;
    const ev = JSON.parse(r.stdout) as {
      data?: { cpu?: { usage?: { total?: number } }; memory?: { usage?: { usage?: number; limit?: number } }; pids?: { current?: number } };
    };
    return {
      cpuNs: ev.data?.cpu?.usage?.total ?? 0,
      memoryBytes: ev.data?.memory?.usage?.usage ?? 0,
      memoryLimitBytes: ev.data?.memory?.usage?.limit ?? 0,
      pids: ev.data?.pids?.current ?? 0,
    };
  }
}

async function lastLogError(logFile: string): Promise<string> {
  try {
    const lines = (await readFile(logFile, 'utf8')).trim().split('\n').reverse();
    for (const line of lines) {
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string };
        if (entry.level === 'error' || entry.level === 'fatal') return entry.msg ?? line;
      } catch {
        /* not JSON: fall through */
      }
    }
    return lines[0] ?? 'no log output';
  } catch {
    return 'no log output';
  }
}

/** Whether `pid` is still the process that started at `startTime` (clock ticks after boot) and has not exited. */
export async function isSameProcess(pid: number, startTime: string): Promise<boolean> {
  const st = await procStat(pid);
  return !exited(st) && st!.startTime === startTime;
}

/** Gone, or a zombie (dead, not reaped yet). */
function exited(st: { state: string } | null): boolean {
  return !st || st.state === 'Z' || st.state === 'X';
}

/** A process's state letter, start time (clock ticks after boot) and nice value, from /proc; null if gone. */
export async function procStat(pid: number): Promise<{ state: string; startTime: string; nice: number } | null> {
  let stat: string;
  try {
    stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name may hold spaces and parentheses: the fields follow the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0] ?? '', startTime: fields[19] ?? '', nice: Number(fields[16]) };
}

/** Waits (a bounded while) until a killed init is a zombie or gone: its namespace's processes are dead then. */
async function initEnded(pid: number, timeoutMs = 5_000) {
  await waitUntil(async () => exited(await procStat(pid)), { timeoutMs, maxDelayMs: 20 });
}
