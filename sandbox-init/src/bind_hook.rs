//! nestbox-bind-hook: the OCI createContainer hook that binds one file of the node over a path of
//! the sandbox's root (runc refuses spec mounts below /proc). runc runs it in the container's
//! mount namespace before pivot_root, once the container's /proc is mounted.
//!
//!   nestbox-bind-hook SOURCE TARGET
//!
//! One mount(2), no recursion, no options: what `mount -n --bind SOURCE TARGET` does, without
//! mount(8), which read the host's whole mount table on the way (~3-4 ms of every create).

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_ulong, c_void};
use std::process::exit;

const MS_BIND: c_ulong = 4096;

extern "C" {
    fn mount(source: *const c_char, target: *const c_char, fstype: *const c_char, flags: c_ulong, data: *const c_void) -> c_int;
}

fn fail(step: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bind hook: {}: {}", step, e);
    exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 || !args.iter().all(|a| a.starts_with('/') && !a.contains('\0')) {
        fail("usage", "nestbox-bind-hook SOURCE TARGET (absolute paths)");
    }
    let source = CString::new(args[0].as_str()).unwrap();
    let target = CString::new(args[1].as_str()).unwrap();
    if unsafe { mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), MS_BIND, std::ptr::null()) } != 0 {
        fail(&format!("binding {} over {}", args[0], args[1]), std::io::Error::last_os_error());
    }
}
