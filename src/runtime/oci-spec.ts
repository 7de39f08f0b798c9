import type { SandboxResources } from '../core/runtime-state.ts';
import { BOOT_ID_FILE, BOOT_ID_PATH, SANDBOX_ENV_FILE, SANDBOX_ENV_PATH } from './sandbox-files.ts';
import { seccompProfile } from './seccomp.ts';

/** runc reads this annotation for a CRIU configuration file of the container's own. */
const CRIU_CONFIG_ANNOTATION = 'org.criu.config';

/** Paths inside the sandbox that the node provides. */
export const INIT_PATH_IN_SANDBOX = '/.nestbox/init';
export const SOCKET_DIR_IN_SANDBOX = '/run/nestbox';
export const SOCKET_NAME = 'init.sock';

export interface SpecInput {
  sandboxId: string;
  rootfs: string; // the overlay mount point
  initBinary: string; // host path (on the sandbox's disk), bound read-only at INIT_PATH_IN_SANDBOX
  socketDir: string; // host path (on the sandbox's disk), bound at SOCKET_DIR_IN_SANDBOX
  etcDir: string; // host path holding hosts, hostname and resolv.conf, each bound over /etc's
  networkHook: { path: string; args: string[]; timeout: number };
  /** nestbox-bind-hook (sandbox-init/): one bind mount in the container's mount namespace. */
  bindHook: string;
  /** Host path of the sandbox's CRIU configuration (runc hands it to CRIU at dump and restore). */
  criuConfig: string;
  resources: SandboxResources;
  uidShift: number;
  uidRange: number;
}

/**
 * Container engines' default set, without CAP_NET_RAW: with it, root inside could forge packets
 * (ping works without it, through unprivileged ICMP sockets: the network hook allows them).
 */
const CAPABILITIES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD',
  'CAP_SETGID', 'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

/**
 * What the sandbox must not read: host details and kernel side channels (as container engines
 * mask). runc hides a file under /dev/null and a directory under an empty read-only tmpfs;
 * CRIU keeps the directories' masks as external mounts (sandbox-directories.ts, criuConfig).
 */
export const MASKED_DIRECTORIES = ['/proc/acpi', '/proc/asound', '/proc/scsi', '/sys/devices/virtual/powercap', '/sys/firmware'];
const MASKED_PATHS = [
  ...MASKED_DIRECTORIES, '/proc/config.gz', '/proc/interrupts', '/proc/kcore', '/proc/keys',
  '/proc/latency_stats', '/proc/sched_debug', '/proc/timer_list', '/proc/timer_stats',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

const CPU_PERIOD_US = 100_000;

/** The OCI runtime spec (config.json) of one sandbox. */
export function buildOciSpec(input: SpecInput) {
  const { resources } = input;
  const memoryBytes = resources.memoryMB * 1024 * 1024;
  return {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: [INIT_PATH_IN_SANDBOX, '--socket', `${SOCKET_DIR_IN_SANDBOX}/${SOCKET_NAME}`],
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      cwd: '/',
      capabilities: {
        bounding: CAPABILITIES,
        effective: CAPABILITIES,
        permitted: CAPABILITIES,
      },
      // Off so that setuid programs work (`sudo` for `user`, as in E2B's base template). Safe:
      // container root is an unprivileged host uid in the sandbox's own user namespace, so a
      // setuid binary reaches nothing beyond that root, which an envd token grants anyway; and
      // the seccomp filter is inherited across execve and cannot be dropped, setuid or not.
      noNewPrivileges: false,
    },
    root: { path: input.rootfs, readonly: false },
    hooks: {
      createRuntime: [input.networkHook],
      // The sandbox's own boot id over the host's. runc refuses spec mounts below /proc, so
      // this bind is made in the container's mount namespace before pivot_root, where /proc is
      // the procfs runc just mounted on a real directory (runc refuses anything else there).
      // CRIU keeps it as an external mount (criuConfig names it) and binds it again at restore.
      createContainer: [{
        path: input.bindHook,
        args: ['nestbox-bind-hook', `${input.etcDir}/${BOOT_ID_FILE}`, `${input.rootfs}${BOOT_ID_PATH}`],
        timeout: 10,
      }],
    },
    annotations: { [CRIU_CONFIG_ANNOTATION]: input.criuConfig },
    // Its id (a resume of the same sandbox brings the same name back with its memory).
    hostname: input.sandboxId,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      {
        destination: '/dev',
        type: 'tmpfs',
        source: 'tmpfs',
        options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
      },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      {
        destination: '/dev/shm',
        type: 'tmpfs',
        source: 'shm',
        options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'],
      },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      {
        destination: INIT_PATH_IN_SANDBOX,
        type: 'bind',
        source: input.initBinary,
        options: ['bind', 'ro', 'nosuid', 'nodev'],
      },
      {
        destination: SOCKET_DIR_IN_SANDBOX,
        type: 'bind',
        source: input.socketDir,
        options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'],
      },
      ...(['hosts', 'hostname', 'resolv.conf'] as const).map((name) => ({
        destination: `/etc/${name}`,
        type: 'bind',
        source: `${input.etcDir}/${name}`,
        options: ['bind', 'rw', 'nosuid', 'nodev', 'noexec'],
      })),
      {
        destination: SANDBOX_ENV_PATH,
        type: 'bind',
        source: `${input.etcDir}/${SANDBOX_ENV_FILE}`,
        options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'],
      },
    ],
    linux: {
      uidMappings: [{ containerID: 0, hostID: input.uidShift, size: input.uidRange }],
      gidMappings: [{ containerID: 0, hostID: input.uidShift, size: input.uidRange }],
      namespaces: [
        { type: 'pid' },
        { type: 'ipc' },
        { type: 'uts' },
        { type: 'mount' },
        { type: 'user' },
        // /proc/self/cgroup says `/`, not where the sandbox sits in the host's hierarchy.
        { type: 'cgroup' },
        // runc creates it inside the user namespace (CRIU cannot checkpoint a namespace owned by
        // the host's); the createRuntime hook wires it up at run and again at restore.
        { type: 'network' },
      ],
      cgroupsPath: `/nestbox/${input.sandboxId}`,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: { limit: memoryBytes, swap: memoryBytes },
        cpu: { period: CPU_PERIOD_US, quota: Math.round(resources.cpuCount * CPU_PERIOD_US) },
        pids: { limit: resources.pidsLimit },
      },
      seccomp: seccompProfile(),
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
    },
  };
}
