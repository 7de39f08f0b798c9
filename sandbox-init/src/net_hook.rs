//! nestbox-net-hook: the OCI createRuntime hook that wires a sandbox's network namespace to the
//! host. runc runs it after the container's namespaces exist, both at `runc run` and at
//! `runc restore` (CRIU restores the network namespace empty), with the container state (JSON
//! holding the init's pid) on stdin, before any program of the sandbox runs.
//!
//!   nestbox-net-hook HOST_INTERFACE ADDRESS GATEWAY
//!
//! One process and a few netlink requests, where `ip` took six processes (~13 ms of a create).

mod netlink;
mod sys;

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::raw::c_int;
use std::process::exit;

use netlink::{link_index, Netlink};

const CLONE_NEWNET: c_int = 0x4000_0000;
/// The sandbox's side of the pair, in its own namespace.
const SANDBOX_LINK: &str = "eth0";

extern "C" {
    fn setns(fd: c_int, nstype: c_int) -> c_int;
}

fn fail(step: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("network hook: {}: {}", step, e);
    exit(1);
}

/// The pid in runc's state (`"pid": N`), read with bounds: one line of JSON, at most 64 KiB.
fn init_pid() -> u32 {
    let mut state = Vec::new();
    if let Err(e) = io::stdin().take(64 * 1024).read_to_end(&mut state) {
        fail("reading the container state", e);
    }
    let text = String::from_utf8_lossy(&state);
    let at = match text.find("\"pid\":") {
        Some(i) => i + "\"pid\":".len(),
        None => fail("the container state", "no pid in it"),
    };
    let digits: String = text[at..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    match digits.parse::<u32>() {
        Ok(p) if p > 0 => p,
        _ => fail("the container state", "no pid in it"),
    }
}

fn write_sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        fail(path, e);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        fail("usage", "nestbox-net-hook HOST_INTERFACE ADDRESS GATEWAY");
    }
    let host_if = &args[0];
    // A name the kernel takes and that is safe in a /proc/sys path.
    if host_if.is_empty() || host_if.len() > 15 || !host_if.bytes().all(|b| b.is_ascii_alphanumeric()) {
        fail("usage", format!("bad interface name {:?}", host_if));
    }
    let address: Ipv4Addr = args[1].parse().unwrap_or_else(|e| fail("usage: ADDRESS", e));
    let gateway: Ipv4Addr = args[2].parse().unwrap_or_else(|e| fail("usage: GATEWAY", e));
    let pid = init_pid();

    let ns_path = std::ffi::CString::new(format!("/proc/{}/ns/net", pid)).unwrap();
    let netns = unsafe { sys::open(ns_path.as_ptr(), sys::O_CLOEXEC) };
    if netns < 0 {
        fail("opening the sandbox's network namespace", sys::last_err());
    }

    // The host's side. (A link left by an earlier attempt was removed by the agent before this.)
    let mut host = Netlink::open().unwrap_or_else(|e| fail("netlink", e));
    host.add_veth(host_if, SANDBOX_LINK, netns).unwrap_or_else(|e| fail("creating the veth pair", e));
    // No IPv6 on the link, on either side, before it comes up: a link-local address on the host
    // side would be a way to the host's services that IPv4's rules do not see.
    write_sysctl(&format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", host_if), "1");
    let host_index = link_index(host_if).unwrap_or_else(|e| fail("finding the host's link", e));
    host.add_address(host_index, gateway).unwrap_or_else(|e| fail("the gateway's address", e));
    host.link_up(host_index).unwrap_or_else(|e| fail("the host's link up", e));
    host.add_host_route(host_index, address, true).unwrap_or_else(|e| fail("the route to the sandbox", e));
    drop(host);

    // The sandbox's side, from inside its namespace: /proc/sys/net is the namespace of whoever
    // writes it, and a netlink socket talks to the namespace it was opened in.
    if unsafe { setns(netns, CLONE_NEWNET) } != 0 {
        fail("entering the sandbox's network namespace", sys::last_err());
    }
    write_sysctl(&format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", SANDBOX_LINK), "1"); // loopback keeps ::1
    write_sysctl("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    let mut inside = Netlink::open().unwrap_or_else(|e| fail("netlink in the sandbox", e));
    let lo = link_index("lo").unwrap_or_else(|e| fail("finding lo", e));
    inside.link_up(lo).unwrap_or_else(|e| fail("lo up", e));
    let eth = link_index(SANDBOX_LINK).unwrap_or_else(|e| fail("finding eth0", e));
    inside.add_address(eth, address).unwrap_or_else(|e| fail("the sandbox's address", e));
    inside.link_up(eth).unwrap_or_else(|e| fail("eth0 up", e));
    inside.add_host_route(eth, gateway, false).unwrap_or_else(|e| fail("the route to the gateway", e));
    inside.add_default_route(eth, gateway).unwrap_or_else(|e| fail("the default route", e));
}
