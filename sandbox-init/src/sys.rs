//! The few libc functions and constants the init needs (Linux, glibc; x86_64 and aarch64).
#![allow(non_camel_case_types, dead_code)]

use std::io;
use std::os::raw::{c_char, c_int, c_long, c_ulong, c_void};

pub type pid_t = i32;
pub type uid_t = u32;
pub type gid_t = u32;

#[repr(C)]
pub struct PollFd {
    pub fd: c_int,
    pub events: i16,
    pub revents: i16,
}

#[repr(C)]
pub struct WinSize {
    pub ws_row: u16,
    pub ws_col: u16,
    pub ws_xpixel: u16,
    pub ws_ypixel: u16,
}

/// glibc's sigset_t (1024 bits).
#[repr(C)]
pub struct SigSet {
    pub bits: [u64; 16],
}

extern "C" {
    pub fn getpid() -> pid_t;
    pub fn geteuid() -> uid_t;
    pub fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t;
    /// `info` is a siginfo_t (128 bytes).
    pub fn waitid(idtype: c_int, id: u32, info: *mut [u64; 16], options: c_int) -> c_int;
    pub fn kill(pid: pid_t, sig: c_int) -> c_int;
    pub fn getpgid(pid: pid_t) -> pid_t;
    pub fn setsid() -> pid_t;
    pub fn ioctl(fd: c_int, req: c_ulong, ...) -> c_int;
    pub fn posix_openpt(flags: c_int) -> c_int;
    pub fn grantpt(fd: c_int) -> c_int;
    pub fn unlockpt(fd: c_int) -> c_int;
    pub fn ptsname_r(fd: c_int, buf: *mut c_char, len: usize) -> c_int;
    pub fn setfsuid(uid: uid_t) -> c_int;
    pub fn setfsgid(gid: gid_t) -> c_int;
    pub fn syscall(n: c_long, ...) -> c_long;
    pub fn signal(sig: c_int, handler: usize) -> usize;
    pub fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    pub fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    pub fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    pub fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    pub fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize;
    pub fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    pub fn close(fd: c_int) -> c_int;
    pub fn chdir(path: *const c_char) -> c_int;
    pub fn prctl(option: c_int, arg2: c_ulong, arg3: c_ulong, arg4: c_ulong, arg5: c_ulong) -> c_int;
    pub fn inotify_init1(flags: c_int) -> c_int;
    pub fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int;
    pub fn poll(fds: *mut PollFd, n: c_ulong, timeout: c_int) -> c_int;
    pub fn umask(mask: u32) -> u32;
    pub fn mallopt(param: c_int, value: c_int) -> c_int;
    pub fn __errno_location() -> *mut c_int;
    pub fn fchmod(fd: c_int, mode: u32) -> c_int;
    pub fn shutdown(fd: c_int, how: c_int) -> c_int;
    pub fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    pub fn bind(fd: c_int, addr: *const SockAddrUn, len: u32) -> c_int;
    pub fn listen(fd: c_int, backlog: c_int) -> c_int;
}

#[repr(C)]
pub struct SockAddrUn {
    pub sun_family: u16,
    pub sun_path: [u8; 108],
}

pub const AF_UNIX: c_int = 1;
pub const SOCK_STREAM: c_int = 1;
pub const SOCK_CLOEXEC: c_int = O_CLOEXEC;

pub const O_WRONLY: c_int = 0o1;
pub const O_RDWR: c_int = 0o2;
pub const O_NOCTTY: c_int = 0o400;
pub const O_NONBLOCK: c_int = 0o4000;
pub const O_CLOEXEC: c_int = 0o2000000;
pub const F_GETFL: c_int = 3;
pub const F_SETFL: c_int = 4;
pub const WNOHANG: c_int = 1;
pub const WEXITED: c_int = 4;
pub const WNOWAIT: c_int = 0x0100_0000;
pub const P_PID: c_int = 1;
pub const PR_SET_PDEATHSIG: c_int = 1;
pub const PR_SET_DUMPABLE: c_int = 4;
pub const PR_SET_CHILD_SUBREAPER: c_int = 36;
pub const TIOCSCTTY: c_ulong = 0x540E;
pub const TIOCSWINSZ: c_ulong = 0x5414;
pub const SIG_DFL: usize = 0;
pub const SIG_IGN: usize = 1;
pub const SIG_ERR: usize = !0;
pub const SIG_SETMASK: c_int = 2;
pub const SIGHUP: c_int = 1;
pub const SIGINT: c_int = 2;
pub const SIGKILL: c_int = 9;
pub const SIGPIPE: c_int = 13;
pub const SIGTERM: c_int = 15;
pub const SIGCHLD: c_int = 17;
pub const SIGSTOP: c_int = 19;
pub const POLLIN: i16 = 0x1;
pub const POLLOUT: i16 = 0x4;
pub const POLLERR: i16 = 0x8;
pub const POLLHUP: i16 = 0x10;
pub const SHUT_RDWR: c_int = 2;
pub const M_TRIM_THRESHOLD: c_int = -1;
pub const M_MMAP_THRESHOLD: c_int = -3;
pub const M_ARENA_MAX: c_int = -8;

pub const IN_MODIFY: u32 = 0x2;
pub const IN_ATTRIB: u32 = 0x4;
pub const IN_MOVED_FROM: u32 = 0x40;
pub const IN_MOVED_TO: u32 = 0x80;
pub const IN_CREATE: u32 = 0x100;
pub const IN_DELETE: u32 = 0x200;
pub const IN_DELETE_SELF: u32 = 0x400;
pub const IN_MOVE_SELF: u32 = 0x800;
pub const IN_Q_OVERFLOW: u32 = 0x4000;
pub const IN_IGNORED: u32 = 0x8000;
pub const IN_ONLYDIR: u32 = 0x0100_0000;
pub const IN_EXCL_UNLINK: u32 = 0x0400_0000;
pub const IN_ISDIR: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
pub const SYS_SETGROUPS: c_long = 116;
#[cfg(target_arch = "x86_64")]
pub const SYS_SETGID: c_long = 106;
#[cfg(target_arch = "x86_64")]
pub const SYS_SETUID: c_long = 105;
#[cfg(target_arch = "aarch64")]
pub const SYS_SETGROUPS: c_long = 159;
#[cfg(target_arch = "aarch64")]
pub const SYS_SETGID: c_long = 144;
#[cfg(target_arch = "aarch64")]
pub const SYS_SETUID: c_long = 146;

pub fn errno() -> c_int {
    unsafe { *__errno_location() }
}

pub fn last_err() -> io::Error {
    io::Error::last_os_error()
}

pub fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}
