//! Processes: spawning, output fan-out and buffering, reaping.

use crate::json::{base64_decode, Value};
use crate::sys;
use crate::{fail, invalid, io_fail, lock, spawn_thread, users, write_data, write_json, Fail, Req, SMALL_STACK};
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::raw::{c_char, c_int, c_long};
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Output kept per process while no reader is attached.
const BUF_CAP: usize = 1024 * 1024;
/// Output queued for one reader that does not keep up; beyond it the reader is disconnected.
const READER_CAP: usize = 8 * 1024 * 1024;
/// How long an exited process may keep its output open before its exit is reported anyway.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long an exit nobody has seen is kept.
const EXIT_KEEP: Duration = Duration::from_secs(60);
/// How long `input` waits for a process that does not read its stdin.
const STDIN_TIMEOUT: Duration = Duration::from_secs(10);

pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_PTY: u8 = 3;

type Exit = (Option<i64>, Option<i64>);

enum Msg {
    Data(u8, Arc<Vec<u8>>),
    Exit(Exit),
}

struct Queue {
    msgs: VecDeque<Msg>,
    bytes: usize,
    closed: bool,
}

/// One attached connection: a queue drained by the connection's thread.
pub struct Reader {
    q: Mutex<Queue>,
    cv: Condvar,
    sock: UnixStream,
}

impl Reader {
    fn new(sock: UnixStream) -> Reader {
        Reader { q: Mutex::new(Queue { msgs: VecDeque::new(), bytes: 0, closed: false }), cv: Condvar::new(), sock }
    }

    fn push(&self, m: Msg) -> bool {
        let n = match &m {
            Msg::Data(_, d) => d.len(),
            Msg::Exit(_) => 0,
        };
        let mut q = lock(&self.q);
        if q.closed {
            return false;
        }
        if q.bytes + n > READER_CAP {
            // A reader that does not read: cut it off rather than grow without bound.
            q.closed = true;
            drop(q);
            self.cv.notify_all();
            let _ = self.sock.shutdown(Shutdown::Both);
            return false;
        }
        q.bytes += n;
        q.msgs.push_back(m);
        drop(q);
        self.cv.notify_one();
        true
    }

    fn close(&self) {
        lock(&self.q).closed = true;
        self.cv.notify_all();
    }

    fn next(&self) -> Option<Msg> {
        let mut q = lock(&self.q);
        loop {
            if q.closed {
                return None;
            }
            if let Some(m) = q.msgs.pop_front() {
                if let Msg::Data(_, d) = &m {
                    q.bytes -= d.len();
                }
                return Some(m);
            }
            q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct PState {
    buf: VecDeque<(u8, Arc<Vec<u8>>)>,
    buf_bytes: usize,
    dropped: u64,
    readers: Vec<Arc<Reader>>,
    open_outputs: u32,
    exit: Option<Exit>,
    finalized: bool,
}

pub struct Proc {
    pid: i32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    tag: Option<String>,
    master: Option<File>,
    stdin: Mutex<Option<File>>,
    st: Mutex<PState>,
}

/// Held while spawning and while reaping, so a pid is in the table before it can be reaped
/// (and std's own wait for a failed exec never races with waitpid(-1)).
static SPAWN: Mutex<()> = Mutex::new(());
static PROCS: Mutex<Option<HashMap<i32, Arc<Proc>>>> = Mutex::new(None);

fn with_table<T>(f: impl FnOnce(&mut HashMap<i32, Arc<Proc>>) -> T) -> T {
    let mut g: MutexGuard<'_, Option<HashMap<i32, Arc<Proc>>>> = lock(&PROCS);
    f(g.get_or_insert_with(HashMap::new))
}

fn find(pid: i64) -> Option<Arc<Proc>> {
    with_table(|t| t.get(&(pid as i32)).cloned())
}

fn forget(p: &Arc<Proc>) {
    with_table(|t| {
        if t.get(&p.pid).map_or(false, |q| Arc::ptr_eq(q, p)) {
            t.remove(&p.pid);
        }
    });
}

impl Proc {
    fn push_output(&self, ch: u8, data: Vec<u8>) {
        let len = data.len();
        let chunk = Arc::new(data);
        let mut st = lock(&self.st);
        if !st.readers.is_empty() {
            st.readers.retain(|r| r.push(Msg::Data(ch, chunk.clone())));
            if !st.readers.is_empty() {
                return;
            }
        }
        st.buf_bytes += len;
        st.buf.push_back((ch, chunk));
        while st.buf_bytes > BUF_CAP {
            match st.buf.pop_front() {
                Some((_, d)) => {
                    st.buf_bytes -= d.len();
                    st.dropped += d.len() as u64;
                }
                None => break,
            }
        }
    }

    fn remove_reader(&self, r: &Arc<Reader>) {
        lock(&self.st).readers.retain(|x| !Arc::ptr_eq(x, r));
    }

    fn is_running(&self) -> bool {
        lock(&self.st).exit.is_none()
    }
}

fn output_closed(p: &Arc<Proc>) {
    let done = {
        let mut st = lock(&p.st);
        st.open_outputs = st.open_outputs.saturating_sub(1);
        st.open_outputs == 0 && st.exit.is_some()
    };
    if done {
        finalize(p);
    }
}

fn set_exit(p: &Arc<Proc>, exit: Exit) {
    let done = {
        let mut st = lock(&p.st);
        if st.exit.is_some() {
            return;
        }
        st.exit = Some(exit);
        st.open_outputs == 0
    };
    if done {
        finalize(p);
        return;
    }
    // Something (a background child) may hold the output open: report the exit after a grace.
    let p2 = p.clone();
    if spawn_thread("grace", SMALL_STACK, move || {
        std::thread::sleep(DRAIN_GRACE);
        finalize(&p2);
    })
    .is_err()
    {
        finalize(p);
    }
}

/// Delivers the exit to the attached readers (after all output that was read).
fn finalize(p: &Arc<Proc>) {
    let seen = {
        let mut st = lock(&p.st);
        let exit = match (st.finalized, st.exit) {
            (false, Some(e)) => e,
            _ => return,
        };
        st.finalized = true;
        st.readers.retain(|r| r.push(Msg::Exit(exit)));
        !st.readers.is_empty()
    };
    if seen {
        forget(p);
    } else {
        let p2 = p.clone();
        let _ = spawn_thread("forget", SMALL_STACK, move || {
            std::thread::sleep(EXIT_KEEP);
            forget(&p2);
        });
    }
}

/// Reaps every exited child (the init is PID 1 or a subreaper); called on SIGCHLD.
pub fn reap() {
    let _g = lock(&SPAWN);
    loop {
        let mut status: c_int = 0;
        let pid = unsafe { sys::waitpid(-1, &mut status, sys::WNOHANG) };
        if pid <= 0 {
            break;
        }
        let exit: Exit = if status & 0x7f == 0 {
            (Some(((status >> 8) & 0xff) as i64), None)
        } else {
            (None, Some((status & 0x7f) as i64))
        };
        if let Some(p) = find(pid as i64) {
            set_exit(&p, exit);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming to a connection

fn exit_value(pid: i32, e: Exit) -> Value {
    Value::obj(vec![
        ("type", Value::str("exit")),
        ("pid", Value::int(pid as i64)),
        ("exit_code", Value::opt_int(e.0)),
        ("signal", Value::opt_int(e.1)),
    ])
}

/// Notices the client closing the connection (which detaches the reader).
fn spawn_close_detector(s: &UnixStream, reader: &Arc<Reader>) {
    let sock = match s.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let reader = reader.clone();
    let _ = spawn_thread("detach", SMALL_STACK, move || {
        let _ = sock.set_read_timeout(None);
        let mut b = [0u8; 256];
        loop {
            match (&sock).read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        reader.close();
    });
}

fn stream_to(s: &mut UnixStream, p: &Arc<Proc>, reader: &Arc<Reader>, first: &Value) {
    if write_json(s, first).is_ok() {
        spawn_close_detector(s, reader);
        while let Some(m) = reader.next() {
            match m {
                Msg::Data(ch, d) => {
                    if write_data(s, ch, &d).is_err() {
                        break;
                    }
                }
                Msg::Exit(e) => {
                    let _ = write_json(s, &exit_value(p.pid, e));
                    break;
                }
            }
        }
    }
    reader.close();
    p.remove_reader(reader);
    let _ = s.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// start

struct ChildSetup {
    change_ids: bool,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    cwd: CString,
    pty: bool,
}

/// Runs in the forked child before exec: only async-signal-safe calls, no allocation.
fn child_setup(c: &ChildSetup) -> io::Result<()> {
    unsafe {
        if sys::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if c.pty && sys::ioctl(0, sys::TIOCSCTTY, 0 as c_long) < 0 {
            return Err(io::Error::last_os_error());
        }
        for sig in 1..65 {
            if sig != sys::SIGKILL && sig != sys::SIGSTOP && sig != 32 && sig != 33 {
                sys::signal(sig, sys::SIG_DFL);
            }
        }
        let empty = sys::SigSet { bits: [0; 16] };
        sys::sigprocmask(sys::SIG_SETMASK, &empty, std::ptr::null_mut());
        let fd = sys::open(b"/proc/self/oom_score_adj\0".as_ptr() as *const c_char, sys::O_WRONLY | sys::O_CLOEXEC);
        if fd >= 0 {
            sys::write(fd, b"0".as_ptr() as *const _, 1);
            sys::close(fd);
        }
        if c.change_ids
            && (sys::syscall(sys::SYS_SETGROUPS, c.groups.len() as c_long, c.groups.as_ptr()) < 0
                || sys::syscall(sys::SYS_SETGID, c.gid as c_long) < 0
                || sys::syscall(sys::SYS_SETUID, c.uid as c_long) < 0)
        {
            return Err(io::Error::last_os_error());
        }
        if sys::chdir(c.cwd.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn open_pty(cols: u16, rows: u16) -> io::Result<(File, File)> {
    unsafe {
        let m = sys::cvt(sys::posix_openpt(sys::O_RDWR | sys::O_NOCTTY | sys::O_CLOEXEC))?;
        let master = File::from_raw_fd(m);
        sys::cvt(sys::grantpt(m))?;
        sys::cvt(sys::unlockpt(m))?;
        let mut name = [0 as c_char; 128];
        let rc = sys::ptsname_r(m, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let s = sys::cvt(sys::open(name.as_ptr(), sys::O_RDWR | sys::O_NOCTTY | sys::O_CLOEXEC))?;
        let slave = File::from_raw_fd(s);
        let ws = sys::WinSize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        sys::cvt(sys::ioctl(m, sys::TIOCSWINSZ, &ws as *const sys::WinSize))?;
        Ok((master, slave))
    }
}

fn parse_argv(r: &Req) -> Result<Vec<String>, Fail> {
    let arr = match r.0.get("argv") {
        Some(Value::Arr(a)) if !a.is_empty() => a,
        _ => return Err(invalid("argv must be a non-empty array of strings")),
    };
    let mut argv = Vec::with_capacity(arr.len());
    for v in arr {
        match v {
            Value::Str(s) if !s.contains('\0') => argv.push(s.clone()),
            _ => return Err(invalid("argv must be a non-empty array of strings without NUL bytes")),
        }
    }
    if argv[0].is_empty() {
        return Err(invalid("argv[0] must not be empty"));
    }
    Ok(argv)
}

fn parse_env(r: &Req) -> Result<Vec<(String, String)>, Fail> {
    let mut env: Vec<(String, String)> = Vec::new();
    match r.0.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Obj(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::Str(s) => s,
                    _ => return Err(invalid(format!("env value of {:?} must be a string", crate::truncate(k, 64)))),
                };
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return Err(invalid(format!("bad env variable {:?}", crate::truncate(k, 64))));
                }
                set_env(&mut env, k, v);
            }
        }
        Some(_) => return Err(invalid("env must be an object of strings")),
    }
    Ok(env)
}

fn set_env(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(kk, _)| kk == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

pub fn resolve(path: &str, home: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else if home.ends_with('/') {
        format!("{}{}", home, path)
    } else {
        format!("{}/{}", home, path)
    }
}

pub fn op_start(r: &Req, s: &mut UnixStream) -> Result<(), Fail> {
    let argv = parse_argv(r)?;
    let req_env = parse_env(r)?;
    let user = users::lookup(r.user()?)?;
    let cwd = match r.opt_str("cwd")? {
        Some(c) if !c.is_empty() => resolve(c, &user.home),
        _ => user.home.clone(),
    };
    let pty = match r.0.get("pty") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Obj(_)) => {
            let pr = Req(v);
            Some((pr.int("cols", 1, 65535)? as u16, pr.int("rows", 1, 65535)? as u16))
        }
        Some(_) => return Err(invalid("pty must be null or {cols, rows}")),
    };
    let stdin = r.opt_bool("stdin")?.unwrap_or(false);
    let tag = r.opt_str("tag")?.map(|t| t.to_string());

    let euid = unsafe { sys::geteuid() };
    if euid != 0 && user.uid != euid {
        return Err(fail("permission", "the init does not run as root and cannot switch users"));
    }
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(fail("not_dir", format!("cwd {}: not a directory", cwd))),
        Err(e) => return Err(io_fail(&e, &format!("cwd {}", cwd))),
    }

    let mut env = vec![
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOME".to_string(), user.home.clone()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
        ("SHELL".to_string(), user.shell.clone()),
    ];
    if pty.is_some() {
        env.push(("TERM".to_string(), "xterm-256color".to_string()));
    }
    for (k, v) in &req_env {
        set_env(&mut env, k, v);
    }

    let setup = ChildSetup {
        change_ids: euid == 0,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
        cwd: CString::new(cwd.clone()).map_err(|_| invalid("cwd contains a NUL byte"))?,
        pty: pty.is_some(),
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    let mut master: Option<File> = None;
    if let Some((cols, rows)) = pty {
        let (m, sl) = open_pty(cols, rows).map_err(|e| io_fail(&e, "allocating a pty"))?;
        let dup = |f: &File| f.try_clone().map_err(|e| io_fail(&e, "dup"));
        cmd.stdin(Stdio::from(dup(&sl)?)).stdout(Stdio::from(dup(&sl)?)).stderr(Stdio::from(sl));
        master = Some(m);
    } else {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    unsafe {
        cmd.pre_exec(move || child_setup(&setup));
    }
    let sock = s.try_clone().map_err(|e| io_fail(&e, "dup"))?;
    let reader = Arc::new(Reader::new(sock));

    let guard = lock(&SPAWN);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            drop(guard);
            return Err(io_fail(&e, &format!("cannot start {:?}", crate::truncate(&argv[0], 200))));
        }
    };
    let pid = child.id() as i32;
    let mut outputs: Vec<(u8, Box<dyn Read + Send>)> = Vec::new();
    let stdin_w: Option<File> = match &master {
        Some(m) => {
            if let Ok(r) = m.try_clone() {
                outputs.push((CH_PTY, Box::new(r)));
            }
            m.try_clone().ok()
        }
        None => {
            if let Some(o) = child.stdout.take() {
                outputs.push((CH_STDOUT, Box::new(o)));
            }
            if let Some(e) = child.stderr.take() {
                outputs.push((CH_STDERR, Box::new(e)));
            }
            child.stdin.take().map(|w| unsafe { File::from_raw_fd(w.into_raw_fd()) })
        }
    };
    let proc = Arc::new(Proc {
        pid,
        argv,
        env: req_env,
        cwd,
        tag,
        master,
        stdin: Mutex::new(stdin_w),
        st: Mutex::new(PState {
            buf: VecDeque::new(),
            buf_bytes: 0,
            dropped: 0,
            readers: vec![reader.clone()],
            open_outputs: outputs.len() as u32,
            exit: None,
            finalized: false,
        }),
    });
    with_table(|t| t.insert(pid, proc.clone()));
    drop(guard);
    // Close the parent's copies of the child's ends (the pty slave) now; never wait on `child`.
    drop(cmd);
    drop(child);

    for (ch, out) in outputs {
        let p = proc.clone();
        let res = spawn_thread("output", SMALL_STACK, move || pump(p, ch, out));
        if res.is_err() {
            output_closed(&proc);
        }
    }
    let started = Value::obj(vec![("type", Value::str("started")), ("pid", Value::int(pid as i64))]);
    stream_to(s, &proc, &reader, &started);
    Ok(())
}

fn pump(p: Arc<Proc>, ch: u8, mut r: Box<dyn Read + Send>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => p.push_output(ch, buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // EIO: the pty slave side is gone
        }
    }
    drop(r);
    output_closed(&p);
}

// ---------------------------------------------------------------------------------------------
// attach / input / signals / list

pub fn op_attach(r: &Req, s: &mut UnixStream) -> Result<(), Fail> {
    let pid = r.int("pid", 1, i32::MAX as i64)?;
    let p = find(pid).ok_or_else(|| fail("not_found", format!("no process {}", pid)))?;
    let sock = s.try_clone().map_err(|e| io_fail(&e, "dup"))?;
    let reader = Arc::new(Reader::new(sock));
    let (dropped, exited) = {
        let mut st = lock(&p.st);
        let buffered: Vec<(u8, Arc<Vec<u8>>)> = st.buf.drain(..).collect();
        for (ch, d) in buffered {
            reader.push(Msg::Data(ch, d));
        }
        st.buf_bytes = 0;
        let dropped = st.dropped;
        st.dropped = 0;
        if st.finalized {
            if let Some(e) = st.exit {
                reader.push(Msg::Exit(e));
            }
            (dropped, true)
        } else {
            st.readers.push(reader.clone());
            (dropped, false)
        }
    };
    if exited {
        forget(&p);
    }
    let attached = Value::obj(vec![
        ("type", Value::str("attached")),
        ("pid", Value::int(p.pid as i64)),
        ("dropped", Value::int(dropped as i64)),
    ]);
    stream_to(s, &p, &reader, &attached);
    Ok(())
}

fn running(r: &Req) -> Result<Arc<Proc>, Fail> {
    let pid = r.int("pid", 1, i32::MAX as i64)?;
    match find(pid) {
        Some(p) if p.is_running() => Ok(p),
        _ => Err(fail("not_found", format!("no running process {}", pid))),
    }
}

pub fn op_input(r: &Req) -> Result<(), Fail> {
    let data = base64_decode(r.str("data")?).ok_or_else(|| invalid("data must be base64"))?;
    let p = running(r)?;
    let mut g = lock(&p.stdin);
    let w = g.as_mut().ok_or_else(|| invalid(format!("stdin of process {} is not open", p.pid)))?;
    write_with_deadline(w, &data, STDIN_TIMEOUT).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            return fail("internal", format!("process {} does not read its stdin", p.pid));
        }
        if e.raw_os_error() == Some(32) {
            invalid(format!("process {} closed its stdin", p.pid))
        } else {
            io_fail(&e, "writing stdin")
        }
    })
}

/// Writes without blocking forever on a process that does not read: waits for POLLOUT, then
/// writes at most PIPE_BUF bytes (which a writable pipe accepts without blocking).
fn write_with_deadline(w: &mut File, mut data: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "stdin write timed out"));
        }
        let mut pfd = sys::PollFd { fd: w.as_raw_fd(), events: sys::POLLOUT, revents: 0 };
        let n = unsafe { sys::poll(&mut pfd, 1, left.as_millis().min(1000) as c_int) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        match w.write(&data[..data.len().min(4096)]) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn op_close_stdin(r: &Req) -> Result<(), Fail> {
    let p = running(r)?;
    let mut g = lock(&p.stdin);
    if p.master.is_some() {
        if let Some(w) = g.as_mut() {
            w.write_all(b"\x04").map_err(|e| io_fail(&e, "writing EOT"))?;
        }
    } else {
        g.take();
    }
    Ok(())
}

pub fn op_signal(r: &Req) -> Result<(), Fail> {
    let sig = r.int("signal", 0, 64)? as c_int;
    let p = running(r)?;
    let target = if unsafe { sys::getpgid(p.pid) } == p.pid { -p.pid } else { p.pid };
    if unsafe { sys::kill(target, sig) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(3) {
            return Err(fail("not_found", format!("no running process {}", p.pid)));
        }
        return Err(io_fail(&e, "kill"));
    }
    Ok(())
}

pub fn op_resize(r: &Req) -> Result<(), Fail> {
    let cols = r.int("cols", 1, 65535)? as u16;
    let rows = r.int("rows", 1, 65535)? as u16;
    let p = running(r)?;
    let m = p.master.as_ref().ok_or_else(|| invalid(format!("process {} has no pty", p.pid)))?;
    let ws = sys::WinSize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    if unsafe { sys::ioctl(m.as_raw_fd(), sys::TIOCSWINSZ, &ws as *const sys::WinSize) } < 0 {
        return Err(io_fail(&io::Error::last_os_error(), "resize"));
    }
    Ok(())
}

pub fn op_list() -> Result<Value, Fail> {
    let mut procs: Vec<Arc<Proc>> = with_table(|t| t.values().cloned().collect());
    procs.sort_by_key(|p| p.pid);
    let mut out = Vec::new();
    for p in procs.iter().filter(|p| p.is_running()) {
        out.push(Value::obj(vec![
            ("pid", Value::int(p.pid as i64)),
            ("argv", Value::Arr(p.argv.iter().map(|a| Value::str(a)).collect())),
            ("env", Value::Obj(p.env.iter().map(|(k, v)| (k.clone(), Value::str(v))).collect())),
            ("cwd", Value::str(&p.cwd)),
            ("tag", p.tag.as_ref().map_or(Value::Null, |t| Value::str(t))),
            ("pty", Value::Bool(p.master.is_some())),
        ]));
    }
    Ok(Value::obj(vec![("type", Value::str("list")), ("processes", Value::Arr(out))]))
}
