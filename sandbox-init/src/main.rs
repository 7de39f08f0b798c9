//! nestbox-init: PID 1 of a Nestbox sandbox. See docs/init-protocol.md.

mod files;
mod json;
mod procs;
mod sys;
mod users;

use json::Value;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const MAX_FRAME: usize = 1024 * 1024 + 16;
pub const MAX_DATA: usize = 1024 * 1024;
pub const KIND_JSON: u8 = 1;
pub const KIND_DATA: u8 = 2;
pub const CONN_STACK: usize = 256 * 1024;
pub const SMALL_STACK: usize = 64 * 1024;

/// Write end of the self-pipe the signal handler writes to.
static SIG_PIPE_W: AtomicI32 = AtomicI32::new(-1);
/// Generation of the listening socket (bumped by SIGHUP).
static LISTEN_GEN: AtomicU64 = AtomicU64::new(0);
static LISTENER: Mutex<Option<UnixListener>> = Mutex::new(None);

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
pub struct Fail {
    pub code: &'static str,
    pub msg: String,
}

pub fn fail(code: &'static str, msg: impl Into<String>) -> Fail {
    Fail { code, msg: msg.into() }
}

pub fn invalid(msg: impl Into<String>) -> Fail {
    fail("invalid", msg)
}

pub fn errno_code(errno: i32) -> &'static str {
    match errno {
        2 => "not_found",                     // ENOENT
        1 | 13 | 30 => "permission",          // EPERM EACCES EROFS
        17 | 39 => "exists",                  // EEXIST ENOTEMPTY
        20 => "not_dir",                      // ENOTDIR
        21 => "is_dir",                       // EISDIR
        28 | 122 => "no_space",               // ENOSPC EDQUOT
        7 | 22 | 36 | 40 => "invalid",        // E2BIG EINVAL ENAMETOOLONG ELOOP
        _ => "internal",
    }
}

pub fn io_fail(e: &io::Error, ctx: &str) -> Fail {
    let code = match e.raw_os_error() {
        Some(n) => errno_code(n),
        None => match e.kind() {
            io::ErrorKind::NotFound => "not_found",
            io::ErrorKind::PermissionDenied => "permission",
            io::ErrorKind::AlreadyExists => "exists",
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => "invalid",
            _ => "internal",
        },
    };
    let mut text = e.to_string();
    if let Some(i) = text.find(" (os error") {
        text.truncate(i);
    }
    fail(code, format!("{}: {}", ctx, text))
}

pub fn error_value(f: &Fail) -> Value {
    Value::obj(vec![("type", Value::str("error")), ("code", Value::str(f.code)), ("message", Value::str(&f.msg))])
}

// ---------------------------------------------------------------------------------------------
// Framing

pub enum ReadErr {
    Eof,
    Io(io::Error),
    Invalid(String),
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadErr> {
    let mut off = 0;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) => {
                return Err(if off == 0 { ReadErr::Eof } else { ReadErr::Invalid("truncated frame".into()) });
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadErr::Io(e)),
        }
    }
    Ok(())
}

/// Reads one frame into `buf` (payload only) and returns its kind.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<u8, ReadErr> {
    let mut hdr = [0u8; 4];
    read_full(r, &mut hdr)?;
    let len = u32::from_be_bytes(hdr) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ReadErr::Invalid(format!("frame length {} out of range", len)));
    }
    let mut kind = [0u8; 1];
    match read_full(r, &mut kind) {
        Err(ReadErr::Eof) => return Err(ReadErr::Invalid("truncated frame".into())),
        other => other?,
    }
    if kind[0] != KIND_JSON && kind[0] != KIND_DATA {
        return Err(ReadErr::Invalid(format!("unknown frame kind {}", kind[0])));
    }
    buf.clear();
    buf.resize(len - 1, 0);
    match read_full(r, buf) {
        Err(ReadErr::Eof) => return Err(ReadErr::Invalid("truncated frame".into())),
        other => other?,
    }
    if kind[0] == KIND_DATA && buf.is_empty() {
        return Err(ReadErr::Invalid("DATA frame without channel".into()));
    }
    Ok(kind[0])
}

pub fn write_json(w: &mut impl Write, v: &Value) -> io::Result<()> {
    let body = v.to_json();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    frame.push(KIND_JSON);
    frame.extend_from_slice(body.as_bytes());
    w.write_all(&frame)
}

pub fn write_data(w: &mut impl Write, channel: u8, data: &[u8]) -> io::Result<()> {
    let mut hdr = [0u8; 6];
    hdr[..4].copy_from_slice(&((data.len() + 2) as u32).to_be_bytes());
    hdr[4] = KIND_DATA;
    hdr[5] = channel;
    if data.len() <= 4096 {
        let mut frame = Vec::with_capacity(6 + data.len());
        frame.extend_from_slice(&hdr);
        frame.extend_from_slice(data);
        return w.write_all(&frame);
    }
    w.write_all(&hdr)?;
    w.write_all(data)
}

// ---------------------------------------------------------------------------------------------
// Request field helpers

pub struct Req<'a>(pub &'a Value);

impl<'a> Req<'a> {
    fn field(&self, k: &str) -> Option<&'a Value> {
        match self.0.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<&'a str>, Fail> {
        match self.field(k) {
            None => Ok(None),
            Some(Value::Str(s)) => {
                if s.contains('\0') {
                    Err(invalid(format!("{} contains a NUL byte", k)))
                } else {
                    Ok(Some(s))
                }
            }
            Some(_) => Err(invalid(format!("{} must be a string", k))),
        }
    }

    pub fn str(&self, k: &str) -> Result<&'a str, Fail> {
        self.opt_str(k)?.ok_or_else(|| invalid(format!("{} is required", k)))
    }

    pub fn opt_bool(&self, k: &str) -> Result<Option<bool>, Fail> {
        match self.field(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(invalid(format!("{} must be a boolean", k))),
        }
    }

    pub fn opt_int(&self, k: &str, min: i64, max: i64) -> Result<Option<i64>, Fail> {
        match self.field(k) {
            None => Ok(None),
            Some(v) => int_value(v, k, min, max).map(Some),
        }
    }

    pub fn int(&self, k: &str, min: i64, max: i64) -> Result<i64, Fail> {
        self.opt_int(k, min, max)?.ok_or_else(|| invalid(format!("{} is required", k)))
    }

    pub fn user(&self) -> Result<&'a str, Fail> {
        let u = self.opt_str("user")?.unwrap_or("user");
        if u.is_empty() {
            return Err(invalid("user must not be empty"));
        }
        Ok(u)
    }
}

pub fn int_value(v: &Value, k: &str, min: i64, max: i64) -> Result<i64, Fail> {
    match v {
        Value::Num(n) if n.fract() == 0.0 && *n >= min as f64 && *n <= max as f64 => Ok(*n as i64),
        _ => Err(invalid(format!("{} must be an integer in [{}, {}]", k, min, max))),
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

fn serve(mut s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = Vec::new();
    let req = match read_frame(&mut s, &mut buf) {
        Ok(KIND_JSON) => match json::parse(&buf) {
            Ok(v @ Value::Obj(_)) => v,
            Ok(_) => return reject(&mut s, invalid("request must be a JSON object")),
            Err(e) => return reject(&mut s, invalid(e)),
        },
        Ok(_) => return reject(&mut s, invalid("expected a JSON request frame")),
        Err(ReadErr::Invalid(m)) => return reject(&mut s, invalid(m)),
        Err(_) => return,
    };
    drop(buf);
    let r = Req(&req);
    let op = match r.str("op") {
        Ok(op) => op.to_string(),
        Err(f) => return reject(&mut s, f),
    };
    let result = match op.as_str() {
        "ping" => write_json(
            &mut s,
            &Value::obj(vec![
                ("type", Value::str("pong")),
                ("version", Value::str(VERSION)),
                ("pid", Value::int(unsafe { sys::getpid() } as i64)),
            ]),
        )
        .map_err(|_| None),
        "start" => procs::op_start(&r, &mut s).map_err(Some),
        "attach" => procs::op_attach(&r, &mut s).map_err(Some),
        "input" => procs::op_input(&r).and_then(|_| ok(&mut s)).map_err(Some),
        "close_stdin" => procs::op_close_stdin(&r).and_then(|_| ok(&mut s)).map_err(Some),
        "signal" => procs::op_signal(&r).and_then(|_| ok(&mut s)).map_err(Some),
        "resize" => procs::op_resize(&r).and_then(|_| ok(&mut s)).map_err(Some),
        "list" => procs::op_list().and_then(|v| send(&mut s, &v)).map_err(Some),
        "read_file" => files::op_read_file(&r, &mut s).map_err(Some),
        "write_file" => files::op_write_file(&r, &mut s).map_err(Some),
        "stat" => files::op_stat(&r).and_then(|v| send(&mut s, &v)).map_err(Some),
        "list_dir" => files::op_list_dir(&r).and_then(|v| send(&mut s, &v)).map_err(Some),
        "mkdir" => files::op_mkdir(&r).and_then(|v| send(&mut s, &v)).map_err(Some),
        "move" => files::op_move(&r).and_then(|v| send(&mut s, &v)).map_err(Some),
        "remove" => files::op_remove(&r).and_then(|_| ok(&mut s)).map_err(Some),
        "watch" => files::op_watch(&r, &mut s).map_err(Some),
        other => Err(Some(invalid(format!("unknown op {:?}", truncate(other, 64))))),
    };
    if let Err(Some(f)) = result {
        let _ = write_json(&mut s, &error_value(&f));
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Answers a bad request, then consumes (a bounded amount of) what the client is still sending,
/// so that it reads the answer instead of failing its write on a closed socket.
fn reject(s: &mut UnixStream, f: Fail) {
    if write_json(s, &error_value(&f)).is_err() {
        return;
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 8192];
    let mut left: usize = 4 * MAX_FRAME;
    while left > 0 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

pub fn send(s: &mut UnixStream, v: &Value) -> Result<(), Fail> {
    let body = v.to_json();
    if body.len() + 1 > MAX_FRAME {
        return Err(invalid("answer would exceed the maximum frame size"));
    }
    write_json(s, v).map_err(|e| io_fail(&e, "write"))
}

fn ok(s: &mut UnixStream) -> Result<(), Fail> {
    write_json(s, &Value::obj(vec![("ok", Value::Bool(true))])).map_err(|e| io_fail(&e, "write"))
}

pub fn spawn_thread<F: FnOnce() + Send + 'static>(name: &str, stack: usize, f: F) -> io::Result<()> {
    std::thread::Builder::new().name(name.to_string()).stack_size(stack).spawn(f).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Listening socket

/// Unlinks `path` and binds a listening socket there, mode 0600 from the start (the mode of a
/// socket inode is taken from the socket at bind time, so it is set before binding).
/// Binding the real path directly (no rename) keeps the socket's name what CRIU expects.
fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::io::FromRawFd;
    let bytes = path.as_os_str().as_bytes();
    let mut addr = sys::SockAddrUn { sun_family: sys::AF_UNIX as u16, sun_path: [0; 108] };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_path[..bytes.len()].copy_from_slice(bytes);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    unsafe {
        let fd = sys::cvt(sys::socket(sys::AF_UNIX, sys::SOCK_STREAM | sys::SOCK_CLOEXEC, 0))?;
        let l = UnixListener::from_raw_fd(fd);
        sys::fchmod(fd, 0o600);
        let len = (std::mem::size_of::<u16>() + bytes.len() + 1) as u32;
        sys::cvt(sys::bind(fd, &addr, len))?;
        sys::cvt(sys::listen(fd, 128))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    }
}

fn listen(path: &Path) -> io::Result<()> {
    let l = bind_socket(path)?;
    let clone = l.try_clone()?;
    let gen = LISTEN_GEN.fetch_add(1, Ordering::SeqCst) + 1;
    let old = lock(&LISTENER).replace(clone);
    spawn_thread("accept", SMALL_STACK, move || accept_loop(l, gen))?;
    if let Some(old) = old {
        // Wakes the old accept thread (accept fails with EINVAL), which then exits.
        unsafe { sys::shutdown(old.as_raw_fd(), sys::SHUT_RDWR) };
    }
    Ok(())
}

fn accept_loop(l: UnixListener, gen: u64) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                let _ = spawn_thread("conn", CONN_STACK, move || serve(s));
            }
            Err(_) => {
                if LISTEN_GEN.load(Ordering::SeqCst) != gen {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signals

extern "C" fn on_signal(sig: i32) {
    unsafe {
        let saved = sys::errno();
        let fd = SIG_PIPE_W.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            sys::write(fd, &b as *const u8 as *const _, 1);
        }
        *sys::__errno_location() = saved;
    }
}

fn setup_signals() -> io::Result<i32> {
    let mut fds = [0i32; 2];
    unsafe {
        sys::cvt(sys::pipe2(fds.as_mut_ptr(), sys::O_CLOEXEC))?;
        let fl = sys::fcntl(fds[1], sys::F_GETFL);
        sys::fcntl(fds[1], sys::F_SETFL, fl | sys::O_NONBLOCK);
        SIG_PIPE_W.store(fds[1], Ordering::SeqCst);
        sys::signal(sys::SIGTERM, sys::SIG_IGN);
        sys::signal(sys::SIGINT, sys::SIG_IGN);
        sys::signal(sys::SIGPIPE, sys::SIG_IGN);
        // glibc's signal() installs BSD semantics (SA_RESTART, handler stays installed).
        if sys::signal(sys::SIGCHLD, on_signal as extern "C" fn(i32) as usize) == sys::SIG_ERR
            || sys::signal(sys::SIGHUP, on_signal as extern "C" fn(i32) as usize) == sys::SIG_ERR
        {
            return Err(sys::last_err());
        }
        let empty = sys::SigSet { bits: [0; 16] };
        sys::sigprocmask(sys::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    Ok(fds[0])
}

fn signal_loop(rfd: i32, socket: &Path) -> ! {
    let mut buf = [0u8; 64];
    loop {
        // The first pass (and every wakeup) reaps whatever exited.
        procs::reap();
        let n = unsafe { sys::read(rfd, buf.as_mut_ptr() as *mut _, buf.len()) };
        if n <= 0 {
            if n < 0 && sys::errno() != 4 {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if buf[..n as usize].contains(&(sys::SIGHUP as u8)) {
            if let Err(e) = listen(socket) {
                eprintln!("nestbox-init: rebinding {}: {}", socket.display(), e);
            }
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: nestbox-init [--socket PATH] [--exit-with-parent] [--version]");
    std::process::exit(2);
}

fn main() {
    let mut socket = PathBuf::from("/run/nestbox/init.sock");
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--version") | Some("-V") => {
                println!("nestbox-init {}", VERSION);
                return;
            }
            // For tests on the host: die with the test runner even if it is killed.
            Some("--exit-with-parent") => unsafe {
                sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL as _, 0, 0, 0);
            },
            Some("--socket") => match args.next() {
                Some(p) => socket = PathBuf::from(p),
                None => usage(),
            },
            Some(s) if s.starts_with("--socket=") => socket = PathBuf::from(&s["--socket=".len()..]),
            _ => usage(),
        }
    }
    unsafe {
        // Keep freed memory out of the RSS: no dynamic mmap threshold, few arenas.
        sys::mallopt(sys::M_MMAP_THRESHOLD, 128 * 1024);
        sys::mallopt(sys::M_TRIM_THRESHOLD, 256 * 1024);
        sys::mallopt(sys::M_ARENA_MAX, 2);
        sys::umask(0o022);
        if sys::getpid() != 1 {
            sys::prctl(sys::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    let rfd = match setup_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("nestbox-init: signals: {}", e);
            std::process::exit(1);
        }
    };
    if let Err(e) = listen(&socket) {
        eprintln!("nestbox-init: listening on {}: {}", socket.display(), e);
        std::process::exit(1);
    }
    signal_loop(rfd, &socket);
}
