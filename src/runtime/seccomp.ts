/**
 * The sandbox seccomp profile: an allow-list, like container engines' default profiles, so a
 * system call the list does not name (including every one a future kernel adds) is refused.
 * It allows what ordinary programs use (compilers, interpreters, package managers, servers,
 * browsers run without their own sandbox, debuggers) and refuses, with EPERM:
 * - what reaches host-global state: clocks, kernel modules, kexec, swap, reboot, accounting,
 *   quotas, the kernel log, keyrings, NUMA policy of host memory;
 * - mounting and namespaces: mount, the new mount API, pivot_root, setns, and clone/unshare
 *   with any namespace flag. No new user namespace means no second set of capabilities inside
 *   (a user namespace would give its creator CAP_SYS_ADMIN there: mounts, nf_tables, ...);
 * - large kernel surfaces ordinary programs do not need: bpf, perf_event_open, io_uring,
 *   userfaultfd, fanotify, file handles (open_by_handle_at), kcmp, vm86/modify_ldt, keyctl;
 * - AF_VSOCK sockets: vsock is not namespaced, and on a VM it reaches the hypervisor's host.
 * clone3 answers ENOSYS (its flags are in memory seccomp cannot read), so C libraries fall back
 * to clone, whose flags are checked.
 * Names the kernel or libseccomp does not know are skipped by runc; numbers newer than any
 * named here answer ENOSYS (runc's stub), so programs fall back as on an older kernel.
 */

const ALLOWED = [
  // files and directories
  'access', 'chdir', 'chmod', 'chown', 'chown32', 'close', 'close_range', 'copy_file_range', 'creat', 'dup', 'dup2',
  'dup3', 'faccessat', 'faccessat2', 'fadvise64', 'fadvise64_64', 'fallocate', 'fchdir', 'fchmod', 'fchmodat',
  'fchown', 'fchown32', 'fchownat', 'fcntl', 'fcntl64', 'fdatasync', 'fgetxattr', 'flistxattr', 'flock',
  'fremovexattr', 'fsetxattr', 'fstat', 'fstat64', 'fstatat64', 'fstatfs', 'fstatfs64', 'fsync', 'ftruncate',
  'ftruncate64', 'futimesat', 'getcwd', 'getdents', 'getdents64', 'getxattr', 'lchown', 'lchown32', 'lgetxattr',
  'link', 'linkat', 'listxattr', 'llistxattr', 'lremovexattr', 'lseek', '_llseek', 'lsetxattr', 'lstat',
  'lstat64', 'mkdir', 'mkdirat', 'mknod', 'mknodat', 'newfstatat', 'open', 'openat', 'openat2', 'pread64',
  'preadv', 'preadv2', 'pwrite64', 'pwritev', 'pwritev2', 'read', 'readahead', 'readlink', 'readlinkat', 'readv',
  'removexattr', 'rename', 'renameat', 'renameat2', 'rmdir', 'sendfile', 'sendfile64', 'setxattr', 'splice', 'stat',
  'stat64', 'statfs', 'statfs64', 'statx', 'symlink', 'symlinkat', 'sync', 'sync_file_range', 'syncfs', 'tee',
  'truncate', 'truncate64', 'umask', 'unlink', 'unlinkat', 'utime', 'utimensat', 'utimensat_time64', 'utimes',
  'vmsplice', 'write', 'writev',
  // file descriptors, polling and events
  'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_pwait', 'epoll_pwait2', 'epoll_wait', 'eventfd', 'eventfd2',
  'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch', 'ioctl', 'pipe', 'pipe2', 'poll',
  'ppoll', 'ppoll_time64', 'pselect6', 'pselect6_time64', 'select', '_newselect', 'signalfd', 'signalfd4',
  'timerfd_create', 'timerfd_gettime', 'timerfd_gettime64', 'timerfd_settime', 'timerfd_settime64',
  'io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64', 'io_setup', 'io_submit',
  'memfd_create',
  // memory
  'brk', 'madvise', 'membarrier', 'mincore', 'mlock', 'mlock2', 'mlockall', 'mmap', 'mmap2', 'mprotect', 'mremap',
  'msync', 'munlock', 'munlockall', 'munmap', 'pkey_alloc', 'pkey_free', 'pkey_mprotect', 'remap_file_pages',
  'process_madvise', 'process_mrelease',
  // processes, threads and signals (clone and personality are allowed below, with conditions)
  'arch_prctl', 'capget', 'capset', 'execve', 'execveat', 'exit', 'exit_group', 'fork', 'futex', 'futex_time64',
  'futex_waitv', 'get_robust_list', 'get_thread_area', 'getcpu', 'getegid', 'getegid32', 'geteuid', 'geteuid32',
  'getgid', 'getgid32', 'getgroups', 'getgroups32', 'getitimer', 'getpgid', 'getpgrp', 'getpid', 'getppid',
  'getpriority', 'getresgid', 'getresgid32', 'getresuid', 'getresuid32', 'getrlimit', 'getrusage', 'getsid',
  'gettid', 'getuid', 'getuid32', 'ioprio_get', 'ioprio_set', 'kill', 'landlock_add_rule',
  'landlock_create_ruleset', 'landlock_restrict_self', 'pause', 'pidfd_getfd', 'pidfd_open', 'pidfd_send_signal',
  'prctl', 'prlimit64', 'process_vm_readv', 'process_vm_writev', 'ptrace', 'restart_syscall', 'rseq',
  'rt_sigaction', 'rt_sigpending', 'rt_sigprocmask', 'rt_sigqueueinfo', 'rt_sigreturn', 'rt_sigsuspend',
  'rt_sigtimedwait', 'rt_sigtimedwait_time64', 'rt_tgsigqueueinfo', 'sched_get_priority_max',
  'sched_get_priority_min', 'sched_getaffinity', 'sched_getattr', 'sched_getparam', 'sched_getscheduler',
  'sched_rr_get_interval', 'sched_rr_get_interval_time64', 'sched_setaffinity', 'sched_setattr',
  'sched_setparam', 'sched_setscheduler', 'sched_yield', 'seccomp', 'set_robust_list', 'set_thread_area',
  'set_tid_address', 'setfsgid', 'setfsgid32', 'setfsuid', 'setfsuid32', 'setgid', 'setgid32', 'setgroups',
  'setgroups32', 'setitimer', 'setpgid', 'setpriority', 'setregid', 'setregid32', 'setresgid', 'setresgid32',
  'setresuid', 'setresuid32', 'setreuid', 'setreuid32', 'setrlimit', 'setsid', 'setuid', 'setuid32',
  'sigaltstack', 'sigreturn', 'sigaction', 'sigpending', 'sigprocmask', 'sigsuspend', 'signal', 'tgkill',
  'tkill', 'ugetrlimit', 'vfork', 'wait4', 'waitid', 'waitpid', 'chroot',
  // time (reading clocks and sleeping only)
  'alarm', 'clock_getres', 'clock_getres_time64', 'clock_gettime', 'clock_gettime64', 'clock_nanosleep',
  'clock_nanosleep_time64', 'gettimeofday', 'nanosleep', 'time', 'timer_create', 'timer_delete',
  'timer_getoverrun', 'timer_gettime', 'timer_gettime64', 'timer_settime', 'timer_settime64', 'times',
  // networking (socket is allowed below, without AF_VSOCK)
  'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen', 'recv',
  'recvfrom', 'recvmmsg', 'recvmmsg_time64', 'recvmsg', 'send', 'sendmmsg', 'sendmsg', 'sendto', 'setsockopt',
  'shutdown', 'socketpair',
  // System V and POSIX IPC (in the sandbox's own IPC namespace)
  'ipc', 'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive', 'mq_timedreceive_time64', 'mq_timedsend',
  'mq_timedsend_time64', 'mq_unlink', 'msgctl', 'msgget', 'msgrcv', 'msgsnd', 'semctl', 'semget', 'semop',
  'semtimedop', 'semtimedop_time64', 'shmat', 'shmctl', 'shmdt', 'shmget',
  // the rest of what programs ask of the kernel about themselves
  'getrandom', 'sysinfo', 'uname', 'olduname', 'oldolduname',
];

// Flags of clone(2)/unshare(2) that make a namespace.
const CLONE_NEWNS = 0x00020000;
const CLONE_NEWCGROUP = 0x02000000;
const CLONE_NEWUTS = 0x04000000;
const CLONE_NEWIPC = 0x08000000;
const CLONE_NEWUSER = 0x10000000;
const CLONE_NEWPID = 0x20000000;
const CLONE_NEWNET = 0x40000000;
const CLONE_NEWTIME = 0x00000080; // unshare only: in clone's flags these bits are the exit signal
const CLONE_NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;

const AF_VSOCK = 40;
/** personality(2) values programs use: Linux, UNAME26, and querying the current one. */
const PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

const EPERM = 1;
const ENOSYS = 38;

type Arg = { index: number; value: number; valueTwo?: number; op: string };
type Rule = { names: string[]; action: string; args?: Arg[]; errnoRet?: number };

const maskedZero = (index: number, mask: number): Arg => ({ index, value: mask, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' });

export function seccompProfile() {
  const syscalls: Rule[] = [
    { names: ALLOWED, action: 'SCMP_ACT_ALLOW' },
    // A thread or process, never a namespace.
    { names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [maskedZero(0, CLONE_NAMESPACES)] },
    // Unsharing files or the file-system context is harmless; a namespace is not.
    { names: ['unshare'], action: 'SCMP_ACT_ALLOW', args: [maskedZero(0, CLONE_NAMESPACES | CLONE_NEWTIME)] },
    { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
    { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: AF_VSOCK, op: 'SCMP_CMP_NE' }] },
    ...PERSONALITIES.map((p): Rule => ({ names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: p, op: 'SCMP_CMP_EQ' }] })),
  ];
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    // 64-bit and 32-bit x86 programs; not the x32 ABI, which nothing ships for (most kernels
    // turn it off): a filter that knows one ABI less is also ~9 ms less of every runc start
    // (libseccomp compiles it there), and an x32 system call is refused outright.
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86'],
    syscalls,
  };
}

/** For tests and the operator: the system calls the profile allows without conditions. */
export const ALLOWED_SYSCALLS: readonly string[] = ALLOWED;
