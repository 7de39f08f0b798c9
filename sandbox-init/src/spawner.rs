//! nestbox-spawner: starts the node's host commands (runc, mount, umount, rm, ...) for the agent
//! (src/runtime/spawner.ts). A process started from the agent itself forks it, and the agent is
//! blocked while its page tables are copied; a process started by Node from a small process
//! still costs 6-8 ms on a 2-CPU node, one after the other. Here each command is started with
//! posix_spawn (a vfork: nothing is copied), about 0.4 ms, from a thread of its own, so many start
//! and run at once.
//!
//! Requests: one JSON object per line on stdin:
//!   { "id": n, "argv": [...], "cwd"?: s, "env"?: {..}, "input"?: s, "timeoutMs"?: n, "capture": b }
//! Answers: one JSON line per request on stdout, in the order the commands end:
//!   { "id": n, "code": n|null, "signal": s|null, "stdout": s, "stderr": s }
//!   { "id": n, "error": { "message": s, "code": s } }           (the command could not start)
//! Without `capture`, the command's stdin, stdout and stderr are /dev/null (a detached runc hands
//! them to its container); `input` is written to its stdin, which is then closed; `env` replaces
//! the environment; past `timeoutMs` the command is killed (SIGKILL).
//!
//! When the agent goes (stdin closes), every command still running is killed and the spawner
//! exits. A command is signalled only while it is known not to have been reaped yet, so a pid
//! the kernel gave to another process since is never signalled.

#[allow(dead_code)]
mod json;
mod sys;

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use json::Value;

/// Requests are a few KiB (an iptables-restore input at most): a longer line is refused.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Commands started and not yet reaped, by request id: only these are ever signalled.
type Live = Arc<Mutex<HashMap<u64, i32>>>;

struct Request {
    id: u64,
    argv: Vec<String>,
    cwd: Option<String>,
    env: Option<Vec<(String, String)>>,
    input: Option<String>,
    timeout: Option<Duration>,
    capture: bool,
}

fn parse_request(line: &[u8]) -> Result<Request, (Option<u64>, String)> {
    let v = json::parse(line).map_err(|e| (None, e))?;
    let id = match v.get("id") {
        Some(Value::Num(n)) if *n >= 0.0 && n.fract() == 0.0 => *n as u64,
        _ => return Err((None, "a request needs a whole number id".into())),
    };
    let bad = |what: &str| (Some(id), format!("invalid request: {}", what));
    let argv = match v.get("argv") {
        Some(Value::Arr(a)) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("argv must be strings"))?,
        _ => return Err(bad("argv must be a non-empty array")),
    };
    let opt_str = |key: &str| match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        _ => Err(bad(&format!("{} must be a string", key))),
    };
    let env = match v.get("env") {
        None | Some(Value::Null) => None,
        Some(Value::Obj(m)) => Some(
            m.iter()
                .map(|(k, x)| x.as_str().map(|s| (k.clone(), s.to_string())))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("env values must be strings"))?,
        ),
        _ => return Err(bad("env must be an object")),
    };
    let timeout = match v.get("timeoutMs") {
        None | Some(Value::Null) => None,
        Some(Value::Num(n)) if *n > 0.0 && n.is_finite() => Some(Duration::from_millis(*n as u64)),
        Some(Value::Num(_)) => None, // 0: no timeout, as in Node
        _ => return Err(bad("timeoutMs must be a number")),
    };
    Ok(Request {
        id,
        cwd: opt_str("cwd")?,
        input: opt_str("input")?,
        env,
        timeout,
        capture: matches!(v.get("capture"), Some(Value::Bool(true))),
        argv,
    })
}

/// Where answers go: one line each, whole (threads share stdout).
#[derive(Clone)]
struct Answers(Arc<Mutex<io::Stdout>>);

impl Answers {
    fn send(&self, v: &Value) {
        let mut line = v.to_json();
        line.push('\n');
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The agent is gone when this fails: stdin's end kills what runs and exits.
        let _ = out.write_all(line.as_bytes()).and_then(|_| out.flush());
    }

    fn error(&self, id: u64, message: &str, code: &str) {
        self.send(&Value::obj(vec![
            ("id", Value::Num(id as f64)),
            ("error", Value::obj(vec![("message", Value::str(message)), ("code", Value::str(code))])),
        ]));
    }
}

/// Kills past their deadline the commands that still run: one thread for all of them.
struct Deadlines {
    queue: Mutex<Vec<(Instant, u64)>>,
    changed: Condvar,
}

impl Deadlines {
    fn add(&self, at: Instant, id: u64) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push((at, id));
        self.changed.notify_one();
    }

    fn remove(&self, id: u64) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).retain(|e| e.1 != id);
    }

    fn run(&self, live: &Live) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let next = q.iter().enumerate().min_by_key(|(_, e)| e.0).map(|(i, e)| (i, *e));
            match next {
                None => q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some((i, (at, id))) => {
                    let now = Instant::now();
                    if at <= now {
                        q.swap_remove(i);
                        signal_live(live, id);
                    } else {
                        q = self.changed.wait_timeout(q, at - now).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
        }
    }
}

fn signal_live(live: &Live, id: u64) {
    let live = live.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&pid) = live.get(&id) {
        unsafe { sys::kill(pid, sys::SIGKILL) };
    }
}

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(1) => "EPERM",
        Some(2) => "ENOENT",
        Some(7) => "E2BIG",
        Some(8) => "ENOEXEC",
        Some(11) => "EAGAIN",
        Some(12) => "ENOMEM",
        Some(13) => "EACCES",
        Some(20) => "ENOTDIR",
        Some(21) => "EISDIR",
        Some(24) => "EMFILE",
        Some(26) => "ETXTBSY",
        Some(40) => "ELOOP",
        Some(n) => return format!("E{}", n),
        None => "EINVAL",
    };
    name.to_string()
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("SIG{}", sig),
    };
    name.to_string()
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

/// Waits until the child has exited without reaping it; then it leaves `live` (no signal can
/// reach it from here on), and only then is it reaped.
fn reap(mut child: Child, id: u64, live: &Live) -> io::Result<std::process::ExitStatus> {
    let pid = child.id();
    loop {
        let mut info = [0u64; 16];
        if unsafe { sys::waitid(sys::P_PID, pid, &mut info, sys::WEXITED | sys::WNOWAIT) } == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            break; // child.wait() below reports it
        }
    }
    live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    child.wait()
}

fn execute(req: Request, answers: &Answers, live: &Live, deadlines: &Deadlines) {
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(env) = &req.env {
        cmd.env_clear();
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    let piped = || if req.capture { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(if req.capture && req.input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(piped());
    cmd.stderr(piped());
    // Registered under the lock the killers take: a command is live from its start.
    let mut child = {
        let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
        match cmd.spawn() {
            Ok(c) => {
                l.insert(req.id, c.id() as i32);
                c
            }
            Err(e) => {
                drop(l);
                let code = errno_name(&e);
                answers.error(req.id, &format!("spawn {} {}", req.argv[0], code), &code);
                return;
            }
        }
    };
    if let Some(t) = req.timeout {
        deadlines.add(Instant::now() + t, req.id);
    }
    let feeder = match (child.stdin.take(), req.input) {
        (Some(mut stdin), Some(input)) => Some(thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes()); // a command that does not read it gets EPIPE
        })),
        _ => None,
    };
    let stderr = child.stderr.take().map(|e| thread::spawn(move || read_all(e)));
    let stdout = child.stdout.take().map(read_all).unwrap_or_default();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let status = reap(child, req.id, live);
    deadlines.remove(req.id);
    match status {
        Ok(s) => answers.send(&Value::obj(vec![
            ("id", Value::Num(req.id as f64)),
            ("code", Value::opt_int(s.code().map(i64::from))),
            ("signal", s.signal().map(|n| Value::Str(signal_name(n))).unwrap_or(Value::Null)),
            ("stdout", Value::Str(String::from_utf8_lossy(&stdout).into_owned())),
            ("stderr", Value::Str(String::from_utf8_lossy(&stderr).into_owned())),
        ])),
        Err(e) => answers.error(req.id, &format!("waiting for {}: {}", req.argv[0], e), &errno_name(&e)),
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("nestbox-spawner {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let answers = Answers(Arc::new(Mutex::new(io::stdout())));
    let live: Live = Arc::new(Mutex::new(HashMap::new()));
    let deadlines = Arc::new(Deadlines { queue: Mutex::new(Vec::new()), changed: Condvar::new() });
    {
        let (d, l) = (deadlines.clone(), live.clone());
        thread::spawn(move || d.run(&l));
    }
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.by_ref().take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST_BYTES {
            eprintln!("nestbox-spawner: a request longer than {} bytes; stopping", MAX_REQUEST_BYTES);
            break;
        }
        match parse_request(&line) {
            Ok(req) => {
                let (a, l, d) = (answers.clone(), live.clone(), deadlines.clone());
                let id = req.id;
                let started = thread::Builder::new().stack_size(128 * 1024).spawn(move || execute(req, &a, &l, &d));
                if let Err(e) = started {
                    answers.error(id, &format!("no thread to start the command on: {}", e), "EAGAIN");
                }
            }
            Err((Some(id), msg)) => answers.error(id, &msg, "EINVAL"),
            Err((None, msg)) => {
                eprintln!("nestbox-spawner: {}; stopping", msg);
                break;
            }
        }
    }
    // The agent is gone (or spoke nonsense): what it started goes with it. The lock is held to
    // the exit, so nothing is reaped between the signals.
    let live = live.lock().unwrap_or_else(|e| e.into_inner());
    for &pid in live.values() {
        unsafe { sys::kill(pid, sys::SIGKILL) };
    }
    std::process::exit(0);
}
