//! Closing connected UDP sockets whose backend is gone (`SOCK_DIAG` dump + `SOCK_DESTROY`).
//!
//! The socket programs translate a connected UDP socket's service address once, at `connect`:
//! when that backend goes away the socket would keep sending into the void (the socket-level twin
//! of kube-proxy's stale UDP conntrack entries). Destroying it makes the application's next call
//! fail with `ECONNABORTED`, so that it opens a new socket, which gets a live backend. Cilium does
//! the same.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
const REQ_LEN: usize = 4 + 4 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 2 + 2 + 16 + 16 + 4 + 8;
/// `struct inet_diag_msg` up to and including the socket id.
const MSG_ID_OFFSET: usize = 4;

/// A socket as the kernel's diag interface names it (the raw `inet_diag_sockid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SocketId([u8; SOCKID_LEN]);

impl SocketId {
    fn destination(&self) -> (Ipv4Addr, u16) {
        let b = &self.0;
        let port = u16::from_be_bytes([b[2], b[3]]);
        let addr = Ipv4Addr::new(b[20], b[21], b[22], b[23]);
        (addr, port)
    }
}

/// Destroys the calling thread's network namespace's UDP sockets connected to `backend`:`port`;
/// returns how many.
pub fn destroy_udp_sockets_to(backend: Ipv4Addr, port: u16) -> io::Result<usize> {
    let netlink = open()?;
    let mut destroyed = 0;
    for id in dump_udp(&netlink)? {
        if id.destination() != (backend, port) {
            continue;
        }
        match request(&netlink, SOCK_DESTROY, libc::NLM_F_ACK as u16, &id) {
            Ok(()) => destroyed += 1,
            // Closed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A request of `kind` for UDP over IPv4 about `id` (all zero: every socket, for a dump).
fn message(kind: u16, flags: u16, id: &SocketId) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.push(libc::AF_INET as u8);
    m.push(libc::IPPROTO_UDP as u8);
    m.push(0); // no extensions
    m.push(0);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&id.0);
    m
}

fn send(netlink: &OwnedFd, message: &[u8]) -> io::Result<()> {
    // SAFETY: `message` is a valid buffer of its length; the descriptor is open.
    let sent = unsafe {
        libc::send(
            netlink.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receive(netlink: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer of its length; the descriptor is open.
    let n = unsafe { libc::recv(netlink.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The netlink messages in `buf[..n]`: (type, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let header = buf.get(offset..offset + NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes(header[..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(header[4..6].try_into().ok()?);
        if len < NLMSG_HDRLEN || offset + len > buf.len() {
            return None;
        }
        let payload = &buf[offset + NLMSG_HDRLEN..offset + len];
        offset += (len + 3) & !3;
        Some((kind, payload))
    })
}

/// The error a `NLMSG_ERROR` payload carries; `None` for an acknowledgement.
fn error_of(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

fn dump_udp(netlink: &OwnedFd) -> io::Result<Vec<SocketId>> {
    send(
        netlink,
        &message(
            SOCK_DIAG_BY_FAMILY,
            libc::NLM_F_DUMP as u16,
            &SocketId([0; SOCKID_LEN]),
        ),
    )?;
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = receive(netlink, &mut buf)?;
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(ids),
                k if k == libc::NLMSG_ERROR as u16 => {
                    if let Some(e) = error_of(payload) {
                        return Err(e);
                    }
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(id) = payload.get(MSG_ID_OFFSET..MSG_ID_OFFSET + SOCKID_LEN) {
                        ids.push(SocketId(id.try_into().expect("length checked")));
                    }
                }
                _ => {}
            }
        }
    }
}

fn request(netlink: &OwnedFd, kind: u16, flags: u16, id: &SocketId) -> io::Result<()> {
    send(netlink, &message(kind, flags, id))?;
    let mut buf = vec![0u8; 4096];
    let n = receive(netlink, &mut buf)?;
    for (kind, payload) in messages(&buf[..n]) {
        if kind == libc::NLMSG_ERROR as u16 {
            return error_of(payload).map_or(Ok(()), Err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let mut raw = [0u8; SOCKID_LEN];
        raw[2..4].copy_from_slice(&53u16.to_be_bytes());
        raw[20..24].copy_from_slice(&[10, 244, 1, 7]);
        let id = SocketId(raw);
        assert_eq!(id.destination(), (Ipv4Addr::new(10, 244, 1, 7), 53));
        let m = message(SOCK_DESTROY, libc::NLM_F_ACK as u16, &id);
        assert_eq!(m.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 21);
        assert_eq!(
            (m[16], m[17]),
            (libc::AF_INET as u8, libc::IPPROTO_UDP as u8)
        );
        assert_eq!(&m[24..], &raw);
    }

    #[test]
    fn messages_are_split_on_their_aligned_lengths() {
        let mut buf = Vec::new();
        for (kind, payload) in [(20u16, vec![1u8, 2, 3]), (3, vec![])] {
            let len = (NLMSG_HDRLEN + payload.len()) as u32;
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(&payload);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
        }
        let parsed: Vec<(u16, Vec<u8>)> = messages(&buf).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(parsed, [(20, vec![1, 2, 3]), (3, vec![])]);
    }
}
