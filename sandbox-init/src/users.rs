//! Users and groups from the container's own /etc/passwd and /etc/group (no NSS).

use crate::{fail, Fail};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary groups, including the primary group.
    pub groups: Vec<u32>,
}

fn read_small(path: &str) -> String {
    // /etc/passwd is tiny; refuse to read absurd files into memory.
    use std::io::Read;
    let mut out = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(4 * 1024 * 1024).read_to_string(&mut out);
    }
    out
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(':').collect::<Vec<_>>())
}

pub fn lookup(spec: &str) -> Result<User, Fail> {
    let numeric: Option<u32> =
        if !spec.is_empty() && spec.len() <= 10 && spec.bytes().all(|b| b.is_ascii_digit()) { spec.parse().ok() } else { None };
    let passwd = read_small("/etc/passwd");
    let mut found: Option<User> = None;
    for f in passwd_entries(&passwd) {
        if f.len() < 7 {
            continue;
        }
        let uid: u32 = match f[2].parse() {
            Ok(u) => u,
            Err(_) => continue,
        };
        let gid: u32 = match f[3].parse() {
            Ok(g) => g,
            Err(_) => continue,
        };
        let matches = match numeric {
            Some(n) => n == uid,
            None => f[0] == spec,
        };
        if matches {
            found = Some(User {
                name: f[0].to_string(),
                uid,
                gid,
                home: if f[5].is_empty() { "/".to_string() } else { f[5].to_string() },
                shell: if f[6].is_empty() { "/bin/sh".to_string() } else { f[6].to_string() },
                groups: Vec::new(),
            });
            break;
        }
    }
    let mut user = match found {
        Some(u) => u,
        None if spec == "root" || numeric == Some(0) => User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
            groups: Vec::new(),
        },
        None => return Err(fail("not_found", format!("unknown user {:?}", crate::truncate(spec, 64)))),
    };
    user.groups.push(user.gid);
    let group = read_small("/etc/group");
    for f in passwd_entries(&group) {
        if f.len() < 4 {
            continue;
        }
        if let Ok(gid) = f[2].parse::<u32>() {
            if f[3].split(',').any(|m| m == user.name) && !user.groups.contains(&gid) {
                user.groups.push(gid);
            }
        }
    }
    Ok(user)
}

/// uid/gid -> name maps for directory listings.
pub struct Names {
    users: Option<HashMap<u32, String>>,
    groups: Option<HashMap<u32, String>>,
}

fn id_map(path: &str) -> HashMap<u32, String> {
    let text = read_small(path);
    let mut m = HashMap::new();
    for f in passwd_entries(&text) {
        if f.len() >= 3 {
            if let Ok(id) = f[2].parse::<u32>() {
                m.entry(id).or_insert_with(|| f[0].to_string());
            }
        }
    }
    m
}

impl Names {
    pub fn new() -> Names {
        Names { users: None, groups: None }
    }

    pub fn user(&mut self, uid: u32) -> String {
        let m = self.users.get_or_insert_with(|| id_map("/etc/passwd"));
        m.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&mut self, gid: u32) -> String {
        let m = self.groups.get_or_insert_with(|| id_map("/etc/group"));
        m.get(&gid).cloned().unwrap_or_else(|| gid.to_string())
    }
}
