//! The pod sandbox: network, UTS and IPC namespaces shared by a pod's containers, bind-mounted
//! onto files so that they outlive every process (like `ip netns add`). Containers get a PID
//! namespace of their own, or the node's ([`PidNamespace`]).

use std::fs;
use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::error::{Error, Result};
use crate::spec::{PidNamespace, SandboxNamespaces};

/// Creates and removes pod sandboxes.
#[derive(Debug)]
pub struct Sandbox;

/// The namespaces a sandbox may bind, `ipc` last (a `hostIPC` pod has none of its own).
const KINDS: [&str; 3] = ["net", "uts", "ipc"];

impl Sandbox {
    /// Creates fresh network (with `lo` up), UTS (named `hostname`) and IPC namespaces bound to
    /// `dir/{net,uts,ipc}`; with `host_ipc` no IPC namespace: the pod's containers keep the
    /// node's.
    pub fn create(dir: &Path, hostname: &str, host_ipc: bool) -> Result<SandboxNamespaces> {
        if hostname.is_empty() || hostname.len() > 64 {
            return Err(Error::invalid("hostname", "must be 1 to 64 characters"));
        }
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let namespaces = SandboxNamespaces {
            net: dir.join("net"),
            uts: dir.join("uts"),
            ipc: (!host_ipc).then(|| dir.join("ipc")),
            pid: PidNamespace::Container,
        };
        let (dir_owned, hostname) = (dir.to_path_buf(), hostname.to_owned());
        // A dedicated thread unshares, so no other thread (e.g. a tokio worker) ever runs in the
        // new namespaces; they live on through the bind mounts after the thread ends.
        let created =
            std::thread::spawn(move || create_on_this_thread(&dir_owned, &hostname, host_ipc))
                .join()
                .map_err(|_| Error::Io {
                    context: "sandbox thread".into(),
                    source: io::Error::other("panicked"),
                })?;
        if let Err(e) = created {
            let _ = Sandbox::remove(dir);
            return Err(e);
        }
        Ok(namespaces)
    }

    /// Unmounts and deletes the namespaces; idempotent.
    pub fn remove(dir: &Path) -> Result<()> {
        for kind in KINDS {
            let path = dir.join(kind);
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(Error::sys(format!("unmounting {}", path.display()))(e)),
            }
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("removing {}", path.display()))(e));
                }
                _ => {}
            }
        }
        match fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

fn create_on_this_thread(dir: &Path, hostname: &str, host_ipc: bool) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    if !host_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    unshare(flags).map_err(Error::sys(format!("unshare({flags:?})")))?;
    nix::unistd::sethostname(hostname).map_err(Error::sys("sethostname"))?;
    loopback_up()?;
    let kinds = if host_ipc { &KINDS[..2] } else { &KINDS[..] };
    for kind in kinds {
        let target = dir.join(kind);
        fs::File::create(&target).map_err(Error::io(format!("creating {}", target.display())))?;
        let source = format!("/proc/thread-self/ns/{kind}");
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(Error::sys(format!(
            "bind-mounting {source} on {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// Sets `lo` up in the calling thread's network namespace: pods talk to themselves over it.
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io("socket for lo")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which outlives the calls.
    unsafe {
        if libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Error::io("SIOCGIFFLAGS lo")(io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Error::io("SIOCSIFFLAGS lo")(io::Error::last_os_error()));
        }
    }
    Ok(())
}
