//! Socket-level load balancing: the cgroup `connect4`, `sendmsg4`, `recvmsg4` and `getpeername4`
//! hooks translate a service address to a backend once, when the socket picks its peer, instead
//! of NATing every packet. In-cluster service traffic thus needs neither per-packet rewriting nor
//! connection tracking, and the reverse hooks make the application see the address it asked for.
//!
//! The programs sit on the root of the cgroup v2 hierarchy and so see every socket of the kernel;
//! they serve only the network namespaces this node registered in `LOCAL_NETNS` (its own and its
//! pods').

use apiary_ebpf_common::{SCOPE_SOCKET, ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue};
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{
    lb,
    maps::{LOCAL_NETNS, NODE_ADDRS, SERVICES, SOCK_REVNAT},
};

/// What the hooks return to let the call go on (possibly with a rewritten address).
const ALLOW: i32 = 1;
/// What `connect4`/`sendmsg4` return to fail the call (with the errno set by `bpf_set_retval`).
const DENY: i32 = 0;
/// A service without ready endpoints refuses connections, as Kubernetes' REJECT rule does.
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

/// Unconnected UDP: every datagram with an address passes here.
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

/// Replies to an unconnected UDP socket: the backend's address becomes the service's again.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    untranslate(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    untranslate(&ctx);
    ALLOW
}

/// The frontend, port and protocol the socket addresses, as the context holds them.
struct Destination {
    addr: [u8; 4],
    port_be: u16,
    protocol: u8,
}

impl Destination {
    #[inline(always)]
    fn of(ctx: &SockAddrContext) -> Self {
        // SAFETY: `sock_addr` is the context the kernel passed to this program; these fields are
        // readable in every sock_addr hook.
        let (ip, port, protocol) = unsafe {
            let sa = &*ctx.sock_addr;
            (sa.user_ip4, sa.user_port, sa.protocol)
        };
        Self {
            addr: ip.to_ne_bytes(),
            // The port sits in the low 16 bits, in network byte order.
            port_be: port as u16,
            protocol: protocol as u8,
        }
    }

    #[inline(always)]
    fn rewrite(ctx: &SockAddrContext, addr: [u8; 4], port_be: u16) {
        // SAFETY: as in `of`; `user_ip4` and `user_port` are writable in these hooks.
        unsafe {
            let sa = &mut *ctx.sock_addr;
            sa.user_ip4 = u32::from_ne_bytes(addr);
            sa.user_port = u32::from(port_be);
        }
    }
}

#[inline(always)]
fn translate(ctx: &SockAddrContext) -> i32 {
    // SAFETY: plain helper calls on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if LOCAL_NETNS.get_ptr(netns).is_none() {
        return ALLOW;
    }
    let dst = Destination::of(ctx);
    let Some(service) = frontend(&dst) else {
        return ALLOW;
    };
    if service.backend_count == 0 {
        // SAFETY: a plain helper call; the kernel turns the denial into this errno.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some((_, backend)) = lb::choose(&service, cookie, netns) else {
        // Tables are written before the frontend points at them; a miss is a torn update: leave
        // the socket alone rather than fail it.
        return ALLOW;
    };
    let reverse = SockRevNatKey {
        cookie,
        backend_addr: backend.addr,
        backend_port_be: backend.port_be,
        pad: 0,
    };
    let frontend = SockRevNatValue {
        addr: dst.addr,
        port_be: dst.port_be,
        pad: 0,
        service_id: service.id,
    };
    // A full LRU map evicts its oldest entry: the insert cannot fail for lack of room.
    let _ = SOCK_REVNAT.insert(reverse, frontend, 0);
    Destination::rewrite(ctx, backend.addr, backend.port_be);
    ALLOW
}

/// The frontend `dst` addresses: a ClusterIP or load-balancer address, or a NodePort on one of
/// this node's addresses or on loopback.
#[inline(always)]
fn frontend(dst: &Destination) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr: dst.addr,
        port_be: dst.port_be,
        protocol: dst.protocol,
        scope: SCOPE_SOCKET,
    };
    // SAFETY: the value is copied out at once.
    if let Some(service) = unsafe { SERVICES.get(key) } {
        return Some(*service);
    }
    let local = dst.addr[0] == 127 || NODE_ADDRS.get_ptr(dst.addr).is_some();
    if !local {
        return None;
    }
    key.addr = [0; 4];
    // SAFETY: as above.
    unsafe { SERVICES.get(key) }.copied()
}

/// Gives back the frontend's address where the socket sees its backend's.
#[inline(always)]
fn untranslate(ctx: &SockAddrContext) {
    let src = Destination::of(ctx);
    // SAFETY: a plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey {
        cookie,
        backend_addr: src.addr,
        backend_port_be: src.port_be,
        pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(frontend) = unsafe { SOCK_REVNAT.get(key) }.copied() {
        Destination::rewrite(ctx, frontend.addr, frontend.port_be);
    }
}
