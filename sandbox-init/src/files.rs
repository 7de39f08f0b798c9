//! File operations, run with the user's file-system ids on the serving thread.

use crate::json::Value;
use crate::procs::resolve;
use crate::sys;
use crate::users::{self, Names};
use crate::{
    error_value, fail, invalid, io_fail, read_frame, write_data, write_json, Fail, ReadErr, Req, KIND_DATA, KIND_JSON,
    MAX_FRAME,
};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::raw::c_long;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNK: usize = 64 * 1024;
const CH_FILE: u8 = 4;
const MAX_DEPTH: i64 = 64;

/// Switches this thread's file-system identity (and supplementary groups) to the user.
/// Connection threads serve one request and exit, so nothing needs restoring.
fn become_user(spec: &str) -> Result<users::User, Fail> {
    let u = users::lookup(spec)?;
    let euid = unsafe { sys::geteuid() };
    if euid != 0 {
        if u.uid != euid {
            return Err(fail("permission", "the init does not run as root and cannot switch users"));
        }
        return Ok(u);
    }
    unsafe {
        // Raw syscall: glibc's setgroups() would apply to every thread of the process.
        if sys::syscall(sys::SYS_SETGROUPS, u.groups.len() as c_long, u.groups.as_ptr()) < 0 {
            return Err(io_fail(&io::Error::last_os_error(), "setgroups"));
        }
        sys::setfsgid(u.gid);
        sys::setfsuid(u.uid);
        if sys::setfsuid(u32::MAX) as u32 != u.uid || sys::setfsgid(u32::MAX) as u32 != u.gid {
            return Err(fail("internal", "cannot switch file-system ids"));
        }
        // Any change of credentials clears the process's dumpable flag, and CRIU cannot
        // checkpoint a non-dumpable process (its /proc/<pid>/ns files turn unreadable): the
        // next pause would fail. Nothing else in the sandbox runs as the init's uid, so
        // setting it back exposes nothing.
        sys::prctl(sys::PR_SET_DUMPABLE, 1, 0, 0, 0);
    }
    Ok(u)
}

fn path_arg(r: &Req, key: &str, home: &str) -> Result<PathBuf, Fail> {
    let p = r.str(key)?;
    if p.is_empty() {
        return Err(invalid(format!("{} must not be empty", key)));
    }
    Ok(PathBuf::from(resolve(p, home)))
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Entries

fn permissions(md: &Metadata) -> String {
    let mode = md.mode();
    let ft = md.file_type();
    let t = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        '-'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '?'
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, shift) in [6u32, 3, 0].iter().enumerate() {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let (flag, on, off) = special[i];
        let x = bits & 1 != 0;
        s.push(match (mode & flag != 0, x) {
            (true, true) => on,
            (true, false) => off,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn entry(path: &Path, md: &Metadata, names: &mut Names) -> Value {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    let name = match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => lossy(path),
    };
    let target = if ft.is_symlink() {
        fs::read_link(path).ok().map(|t| Value::Str(lossy(&t))).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let mtime_ms = md.mtime() * 1000 + md.mtime_nsec() / 1_000_000;
    Value::obj(vec![
        ("name", Value::Str(name)),
        ("type", Value::str(kind)),
        ("path", Value::Str(lossy(path))),
        ("size", Value::int(md.size() as i64)),
        ("mode", Value::int((md.mode() & 0o7777) as i64)),
        ("permissions", Value::Str(permissions(md))),
        ("owner", Value::Str(names.user(md.uid()))),
        ("group", Value::Str(names.group(md.gid()))),
        ("mtime_ms", Value::int(mtime_ms)),
        ("symlink_target", target),
    ])
}

fn stat_entry(path: &Path, names: &mut Names) -> Result<Value, Fail> {
    let md = fs::symlink_metadata(path).map_err(|e| io_fail(&e, &lossy(path)))?;
    Ok(entry(path, &md, names))
}

fn entry_answer(e: Value) -> Value {
    Value::obj(vec![("type", Value::str("entry")), ("entry", e)])
}

// ---------------------------------------------------------------------------------------------
// Ops

pub fn op_stat(r: &Req) -> Result<Value, Fail> {
    let u = become_user(r.user()?)?;
    let path = path_arg(r, "path", &u.home)?;
    Ok(entry_answer(stat_entry(&path, &mut Names::new())?))
}

pub fn op_read_file(r: &Req, s: &mut UnixStream) -> Result<(), Fail> {
    let u = become_user(r.user()?)?;
    let path = path_arg(r, "path", &u.home)?;
    // O_NONBLOCK: opening a FIFO must not hang; only regular files are served.
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(sys::O_NONBLOCK | sys::O_NOCTTY)
        .open(&path)
        .map_err(|e| io_fail(&e, &lossy(&path)))?;
    let md = f.metadata().map_err(|e| io_fail(&e, &lossy(&path)))?;
    if md.is_dir() {
        return Err(fail("is_dir", format!("{}: is a directory", lossy(&path))));
    }
    if !md.is_file() {
        return Err(invalid(format!("{}: not a regular file", lossy(&path))));
    }
    let head = Value::obj(vec![("type", Value::str("file")), ("size", Value::int(md.size() as i64))]);
    if write_json(s, &head).is_err() {
        return Ok(());
    }
    // Exactly `size` bytes are sent: a file that grows is cut there, one that shrinks is an error.
    let mut left = md.size();
    let mut buf = vec![0u8; CHUNK.min(left as usize)];
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => return Err(fail("internal", format!("{}: file shrank while being read", lossy(&path)))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_fail(&e, &lossy(&path))),
        };
        left -= n as u64;
        if write_data(s, CH_FILE, &buf[..n]).is_err() {
            return Ok(());
        }
    }
    let _ = write_json(s, &Value::obj(vec![("type", Value::str("end"))]));
    Ok(())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

enum Upload {
    Done,
    Failed(Fail),
    Gone,
}

/// Receives DATA frames into `f` until `{"op":"end"}`.
fn receive(s: &mut UnixStream, f: &mut File, what: &str) -> Upload {
    let mut buf = Vec::new();
    loop {
        match read_frame(s, &mut buf) {
            Ok(KIND_DATA) => {
                if buf[0] != CH_FILE {
                    return Upload::Failed(invalid("write_file DATA frames must use channel 4"));
                }
                if let Err(e) = f.write_all(&buf[1..]) {
                    return Upload::Failed(io_fail(&e, what));
                }
            }
            Ok(_) => {
                return match crate::json::parse(&buf) {
                    Ok(v) if v.get("op").and_then(|o| o.as_str()) == Some("end") => Upload::Done,
                    _ => Upload::Failed(invalid("expected DATA frames then {\"op\":\"end\"}")),
                };
            }
            Err(ReadErr::Invalid(m)) => return Upload::Failed(invalid(m)),
            Err(_) => return Upload::Gone,
        }
    }
}

/// After an error, consume the rest of the upload so the client reads the answer cleanly.
fn drain(s: &mut UnixStream) {
    let mut buf = Vec::new();
    while let Ok(kind) = read_frame(s, &mut buf) {
        if kind == KIND_JSON {
            break;
        }
    }
}

pub fn op_write_file(r: &Req, s: &mut UnixStream) -> Result<(), Fail> {
    let prep = (|| {
        let u = become_user(r.user()?)?;
        let path = path_arg(r, "path", &u.home)?;
        let mode = r.opt_int("mode", 0, 0o7777)?.unwrap_or(0o644) as u32;
        let append = r.opt_bool("append")?.unwrap_or(false);
        let name = path.file_name().ok_or_else(|| invalid("path must name a file"))?.to_os_string();
        let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("/"));
        if let Ok(md) = fs::metadata(&path) {
            if md.is_dir() {
                return Err(fail("is_dir", format!("{}: is a directory", lossy(&path))));
            }
        }
        if !dir.as_os_str().is_empty() {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir).map_err(|e| io_fail(&e, &lossy(&dir)))?;
        }
        Ok((path, dir, name, mode, append))
    })();
    let (path, dir, name, mode, append) = match prep {
        Ok(x) => x,
        Err(f) => {
            let _ = write_json(s, &error_value(&f));
            drain(s);
            return Ok(());
        }
    };
    let what = lossy(&path);
    let mut guard = TempGuard(None);
    let mut rename_from: Option<PathBuf> = None;
    let opened = if append {
        OpenOptions::new().append(true).create(true).mode(mode).custom_flags(sys::O_NOCTTY).open(&path)
    } else {
        // A new file is written in place (a watcher sees it created, then written, as clients of
        // E2B expect); an existing one is replaced atomically through a temporary name.
        let fresh = if fs::symlink_metadata(&path).is_err() {
            match OpenOptions::new().write(true).create_new(true).mode(mode).open(&path) {
                Ok(f) => {
                    guard.0 = Some(path.clone());
                    Some(Ok(f))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                Err(e) => Some(Err(e)),
            }
        } else {
            None
        };
        match fresh {
            Some(res) => res,
            None => {
                let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
                let mut tmp_name = std::ffi::OsString::from(".");
                tmp_name.push(&name);
                tmp_name.push(format!(".nestbox-{}-{}", unsafe { sys::getpid() }, n));
                let tmp = dir.join(tmp_name);
                let res = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp);
                if res.is_ok() {
                    guard.0 = Some(tmp.clone());
                    rename_from = Some(tmp);
                }
                res
            }
        }
    };
    let mut f = match opened {
        Ok(f) => f,
        Err(e) => {
            let _ = write_json(s, &error_value(&io_fail(&e, &what)));
            drain(s);
            return Ok(());
        }
    };
    match receive(s, &mut f, &what) {
        Upload::Done => {}
        Upload::Gone => return Ok(()),
        Upload::Failed(fl) => {
            drop(f);
            drop(guard);
            let _ = write_json(s, &error_value(&fl));
            drain(s);
            return Ok(());
        }
    }
    if guard.0.is_some() {
        // The umask must not narrow the requested mode.
        unsafe { sys::fchmod(f.as_raw_fd(), mode) };
    }
    drop(f);
    if let Some(tmp) = rename_from {
        fs::rename(&tmp, &path).map_err(|e| io_fail(&e, &what))?;
    }
    guard.0 = None;
    crate::send(s, &entry_answer(stat_entry(&path, &mut Names::new())?))
}

fn walk(dir: &Path, depth: i64, out: &mut Vec<Value>, names: &mut Names, budget: &mut usize) -> Result<(), Fail> {
    let rd = fs::read_dir(dir).map_err(|e| io_fail(&e, &lossy(dir)))?;
    let mut children: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    children.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for child in children {
        let md = match fs::symlink_metadata(&child) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let e = entry(&child, &md, names);
        let size = e.to_json().len() + 1;
        if size > *budget {
            return Err(invalid("listing exceeds the maximum answer size; use a smaller depth"));
        }
        *budget -= size;
        out.push(e);
        if depth > 1 && md.file_type().is_dir() {
            // Unreadable subdirectories are listed but not descended into.
            match walk(&child, depth - 1, out, names, budget) {
                Err(f) if f.code == "invalid" => return Err(f),
                _ => {}
            }
        }
    }
    Ok(())
}

pub fn op_list_dir(r: &Req) -> Result<Value, Fail> {
    let u = become_user(r.user()?)?;
    let path = path_arg(r, "path", &u.home)?;
    let depth = r.opt_int("depth", 1, 1 << 30)?.unwrap_or(1).min(MAX_DEPTH);
    let md = fs::metadata(&path).map_err(|e| io_fail(&e, &lossy(&path)))?;
    if !md.is_dir() {
        return Err(fail("not_dir", format!("{}: not a directory", lossy(&path))));
    }
    let mut out = Vec::new();
    let mut budget = MAX_FRAME - 64;
    walk(&path, depth, &mut out, &mut Names::new(), &mut budget)?;
    Ok(Value::obj(vec![("type", Value::str("entries")), ("entries", Value::Arr(out))]))
}

pub fn op_mkdir(r: &Req) -> Result<Value, Fail> {
    let u = become_user(r.user()?)?;
    let path = path_arg(r, "path", &u.home)?;
    let created = match fs::metadata(&path) {
        Ok(md) if md.is_dir() => false,
        Ok(_) => return Err(fail("exists", format!("{}: exists and is not a directory", lossy(&path)))),
        Err(_) => {
            match fs::DirBuilder::new().recursive(true).mode(0o755).create(&path) {
                Ok(()) => true,
                Err(e) => {
                    // Lost a race with another creator: fine if it is a directory now.
                    match fs::metadata(&path) {
                        Ok(md) if md.is_dir() => false,
                        _ => return Err(io_fail(&e, &lossy(&path))),
                    }
                }
            }
        }
    };
    Ok(Value::obj(vec![("type", Value::str("mkdir")), ("created", Value::Bool(created))]))
}

pub fn op_move(r: &Req) -> Result<Value, Fail> {
    let u = become_user(r.user()?)?;
    let from = path_arg(r, "from", &u.home)?;
    let to = path_arg(r, "to", &u.home)?;
    fs::rename(&from, &to).map_err(|e| io_fail(&e, &format!("{} -> {}", lossy(&from), lossy(&to))))?;
    Ok(entry_answer(stat_entry(&to, &mut Names::new())?))
}

/// Iterative recursive removal (no recursion: a hostile tree must not overflow the stack).
fn remove_tree(root: &Path) -> io::Result<()> {
    let mut stack: Vec<(PathBuf, bool)> = vec![(root.to_path_buf(), false)];
    while let Some((dir, listed)) = stack.pop() {
        if listed {
            fs::remove_dir(&dir)?;
            continue;
        }
        stack.push((dir.clone(), true));
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push((p, false));
            } else {
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

pub fn op_remove(r: &Req) -> Result<(), Fail> {
    let u = become_user(r.user()?)?;
    let path = path_arg(r, "path", &u.home)?;
    let md = fs::symlink_metadata(&path).map_err(|e| io_fail(&e, &lossy(&path)))?;
    let res = if md.is_dir() { remove_tree(&path) } else { fs::remove_file(&path) };
    res.map_err(|e| io_fail(&e, &lossy(&path)))
}

// ---------------------------------------------------------------------------------------------
// watch

const WATCH_MASK: u32 = sys::IN_CREATE
    | sys::IN_MODIFY
    | sys::IN_DELETE
    | sys::IN_MOVED_FROM
    | sys::IN_MOVED_TO
    | sys::IN_ATTRIB
    | sys::IN_DELETE_SELF
    | sys::IN_MOVE_SELF
    | sys::IN_EXCL_UNLINK;

struct Watcher {
    fd: File,
    dirs: HashMap<i32, String>,
    recursive: bool,
    root: PathBuf,
}

impl Watcher {
    fn add(&mut self, rel: &str) -> io::Result<()> {
        let full = if rel.is_empty() { self.root.clone() } else { self.root.join(rel) };
        let c = CString::new(full.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(22))?;
        let wd = unsafe { sys::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), WATCH_MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        self.dirs.insert(wd, rel.to_string());
        Ok(())
    }

    /// Watches `rel` and every directory below it (iteratively).
    fn add_tree(&mut self, rel: &str) {
        let mut todo = vec![rel.to_string()];
        while let Some(d) = todo.pop() {
            if self.add(&d).is_err() || !self.recursive {
                continue;
            }
            let full = if d.is_empty() { self.root.clone() } else { self.root.join(&d) };
            if let Ok(rd) = fs::read_dir(&full) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        let name = e.file_name().to_string_lossy().into_owned();
                        todo.push(if d.is_empty() { name } else { format!("{}/{}", d, name) });
                    }
                }
            }
        }
    }
}

fn fs_event(name: &str, op: &str) -> Value {
    Value::obj(vec![("type", Value::str("fs_event")), ("name", Value::str(name)), ("op", Value::str(op))])
}

pub fn op_watch(r: &Req, s: &mut UnixStream) -> Result<(), Fail> {
    let u = become_user(r.user()?)?;
    let root = path_arg(r, "path", &u.home)?;
    let recursive = r.opt_bool("recursive")?.unwrap_or(false);
    let md = fs::metadata(&root).map_err(|e| io_fail(&e, &lossy(&root)))?;
    if !md.is_dir() {
        return Err(fail("not_dir", format!("{}: not a directory", lossy(&root))));
    }
    let fd = unsafe { sys::inotify_init1(sys::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_fail(&io::Error::last_os_error(), "inotify_init1"));
    }
    let mut w = Watcher { fd: unsafe { File::from_raw_fd(fd) }, dirs: HashMap::new(), recursive, root: root.clone() };
    w.add("").map_err(|e| io_fail(&e, &lossy(&root)))?;
    if recursive {
        w.dirs.clear();
        // Re-adding the same inode returns the same wd; add_tree records it again.
        w.add_tree("");
    }
    if write_json(s, &Value::obj(vec![("type", Value::str("watching"))])).is_err() {
        return Ok(());
    }
    let _ = s.set_read_timeout(None);
    let mut buf = vec![0u8; 16 * 1024];
    let mut sockbuf = [0u8; 256];
    loop {
        let mut fds = [
            sys::PollFd { fd: w.fd.as_raw_fd(), events: sys::POLLIN, revents: 0 },
            sys::PollFd { fd: s.as_raw_fd(), events: sys::POLLIN, revents: 0 },
        ];
        let n = unsafe { sys::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if sys::errno() == 4 {
                continue;
            }
            return Ok(());
        }
        if fds[1].revents != 0 {
            // The client never sends anything after the request: data or hangup ends the watch.
            match (&*s).read(&mut sockbuf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
            if fds[1].revents & (sys::POLLHUP | sys::POLLERR) != 0 {
                return Ok(());
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        let n = match (&w.fd).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(()),
        };
        let mut events: Vec<(String, &'static str)> = Vec::new();
        let mut off = 0;
        let mut root_gone = false;
        while off + 16 <= n {
            let wd = i32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
            let mask = u32::from_ne_bytes([buf[off + 4], buf[off + 5], buf[off + 6], buf[off + 7]]);
            let len = u32::from_ne_bytes([buf[off + 12], buf[off + 13], buf[off + 14], buf[off + 15]]) as usize;
            let name_bytes = &buf[(off + 16).min(n)..(off + 16 + len).min(n)];
            off += 16 + len;
            let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
            let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
            let dir = match w.dirs.get(&wd) {
                Some(d) => d.clone(),
                None => continue,
            };
            let rel = if name.is_empty() {
                dir.clone()
            } else if dir.is_empty() {
                name.clone()
            } else {
                format!("{}/{}", dir, name)
            };
            if mask & sys::IN_IGNORED != 0 {
                w.dirs.remove(&wd);
                if dir.is_empty() {
                    root_gone = true;
                }
                continue;
            }
            let op = if mask & sys::IN_CREATE != 0 {
                "create"
            } else if mask & sys::IN_MODIFY != 0 {
                "write"
            } else if mask & (sys::IN_DELETE | sys::IN_DELETE_SELF) != 0 {
                "remove"
            } else if mask & (sys::IN_MOVED_FROM | sys::IN_MOVED_TO | sys::IN_MOVE_SELF) != 0 {
                "rename"
            } else if mask & sys::IN_ATTRIB != 0 {
                "chmod"
            } else {
                continue;
            };
            // A subdirectory's own delete/move is already reported by its parent.
            if mask & (sys::IN_DELETE_SELF | sys::IN_MOVE_SELF) != 0 && !dir.is_empty() {
                continue;
            }
            if recursive && mask & sys::IN_ISDIR != 0 && mask & (sys::IN_CREATE | sys::IN_MOVED_TO) != 0 {
                w.add_tree(&rel);
            }
            if events.last().map_or(true, |(n, o)| n != &rel || *o != op) {
                events.push((rel, op));
            }
        }
        for (name, op) in events {
            if write_json(s, &fs_event(&name, op)).is_err() {
                return Ok(());
            }
        }
        if root_gone {
            return Ok(());
        }
    }
}
