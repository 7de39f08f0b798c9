//! Just enough rtnetlink for the network hook: a veth pair with its peer in another network
//! namespace, IPv4 addresses and routes, links up. Each request is acknowledged or fails with
//! the kernel's errno.

use std::io;
use std::net::Ipv4Addr;
use std::os::raw::{c_int, c_void};

use crate::sys;

const AF_NETLINK: c_int = 16;
const SOCK_RAW: c_int = 3;
const NETLINK_ROUTE: c_int = 0;
const AF_INET: u8 = 2;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFF_UP: u32 = 0x1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

#[repr(C)]
struct SockAddrNl {
    family: u16,
    pad: u16,
    pid: u32,
    groups: u32,
}

extern "C" {
    fn sendto(fd: c_int, buf: *const c_void, n: usize, flags: c_int, addr: *const SockAddrNl, len: u32) -> isize;
    fn recv(fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> isize;
    fn if_nametoindex(name: *const std::os::raw::c_char) -> u32;
}

/// A route netlink socket of the calling thread's network namespace at the time it is opened.
pub struct Netlink {
    fd: c_int,
    seq: u32,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        unsafe { sys::close(self.fd) };
    }
}

/// A message under construction: the header's length is filled in when it is sent.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by Netlink::request
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        Msg { buf }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(b);
        self
    }

    /// struct ifinfomsg: family, type, index, flags, change.
    fn ifinfo(&mut self, index: u32, flags: u32, change: u32) -> &mut Msg {
        self.bytes(&[0, 0, 0, 0]);
        self.bytes(&(index as i32).to_ne_bytes());
        self.bytes(&flags.to_ne_bytes());
        self.bytes(&change.to_ne_bytes())
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.bytes(&(len as u16).to_ne_bytes());
        self.bytes(&ty.to_ne_bytes());
        self.bytes(data);
        self.align()
    }

    /// Starts a nested attribute; `end_nest` writes its length.
    fn begin_nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.bytes(&0u16.to_ne_bytes());
        self.bytes(&ty.to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) -> &mut Msg {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn align(&mut self) -> &mut Msg {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
        self
    }
}

fn name_attr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let fd = sys::cvt(unsafe { sys::socket(AF_NETLINK, SOCK_RAW | sys::SOCK_CLOEXEC, NETLINK_ROUTE) })?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement (or the kernel's error).
    fn request(&mut self, msg: &mut Msg) -> io::Result<()> {
        self.seq += 1;
        let len = msg.buf.len() as u32;
        msg.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        msg.buf[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        let kernel = SockAddrNl { family: AF_NETLINK as u16, pad: 0, pid: 0, groups: 0 };
        let sent = unsafe {
            sendto(self.fd, msg.buf.as_ptr() as *const c_void, msg.buf.len(), 0, &kernel, std::mem::size_of::<SockAddrNl>() as u32)
        };
        if sent < 0 {
            return Err(sys::last_err());
        }
        let mut answer = [0u8; 8192];
        loop {
            let n = unsafe { recv(self.fd, answer.as_mut_ptr() as *mut c_void, answer.len(), 0) };
            if n < 0 {
                let e = sys::last_err();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let mlen = u32::from_ne_bytes([answer[at], answer[at + 1], answer[at + 2], answer[at + 3]]) as usize;
                let ty = u16::from_ne_bytes([answer[at + 4], answer[at + 5]]);
                let seq = u32::from_ne_bytes([answer[at + 8], answer[at + 9], answer[at + 10], answer[at + 11]]);
                if mlen < 16 || at + mlen > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer"));
                }
                if ty == NLMSG_ERROR && seq == self.seq && mlen >= 20 {
                    let code = i32::from_ne_bytes([answer[at + 16], answer[at + 17], answer[at + 18], answer[at + 19]]);
                    return if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) };
                }
                at += (mlen + 3) & !3;
            }
        }
    }

    /// A veth pair: `host` here, `peer` in the network namespace open as `netns_fd`.
    pub fn add_veth(&mut self, host: &str, peer: &str, netns_fd: c_int) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0).attr(IFLA_IFNAME, &name_attr(host));
        let info = m.begin_nest(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let data = m.begin_nest(IFLA_INFO_DATA);
        let peer_at = m.begin_nest(VETH_INFO_PEER);
        m.ifinfo(0, 0, 0).attr(IFLA_IFNAME, &name_attr(peer)).attr(IFLA_NET_NS_FD, &(netns_fd as u32).to_ne_bytes());
        m.end_nest(peer_at).end_nest(data).end_nest(info);
        self.request(&mut m)
    }

    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index, IFF_UP, IFF_UP);
        self.request(&mut m)
    }

    /// `addr/32` on the link (as `ip addr add addr/32 dev LINK`).
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        m.bytes(&[AF_INET, 32, 0, RT_SCOPE_UNIVERSE]).bytes(&index.to_ne_bytes());
        m.attr(IFA_LOCAL, &addr.octets()).attr(IFA_ADDRESS, &addr.octets());
        self.request(&mut m)
    }

    /// A route to `dst/32` straight over the link (scope link); `replace`: whatever was there goes.
    pub fn add_host_route(&mut self, index: u32, dst: Ipv4Addr, replace: bool) -> io::Result<()> {
        let flags = NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let mut m = Msg::new(RTM_NEWROUTE, flags);
        m.bytes(&[AF_INET, 32, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_LINK, RTN_UNICAST]).bytes(&0u32.to_ne_bytes());
        m.attr(RTA_DST, &dst.octets()).attr(RTA_OIF, &index.to_ne_bytes());
        self.request(&mut m)
    }

    /// The default route, via `gateway` over the link.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        m.bytes(&[AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST]).bytes(&0u32.to_ne_bytes());
        m.attr(RTA_GATEWAY, &gateway.octets()).attr(RTA_OIF, &index.to_ne_bytes());
        self.request(&mut m)
    }
}

/// The index of a link of the calling thread's network namespace.
pub fn link_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad link name"))?;
    let i = unsafe { if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(sys::last_err())
    } else {
        Ok(i)
    }
}
