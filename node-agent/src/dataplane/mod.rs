//! The eBPF data plane: the programs from `ebpf/`, embedded at build time, and a typed wrapper per
//! map.
//!
//! Programs are attached to a pod's host-side veth as TC filters on a `clsact` qdisc through
//! netlink (not TCX links): such filters hold their own reference to the program, so the data plane
//! keeps working while the agent restarts, and every tool (`tc filter show`, `bpftool net show` of
//! any version) shows them.

pub mod bpffs;
pub mod endpoints;
pub mod node_config;
pub mod pod_traffic;
pub mod policy;
pub mod remote_nodes;
pub mod services;
pub mod sock_destroy;

use std::{
    ffi::CString,
    fmt, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};

pub use endpoints::EndpointMap;
pub use node_config::NodeConfigMap;
pub use pod_traffic::PodTrafficMap;
pub use policy::{AllowEntry, FlowSweep, PolicyEvents, PolicyMaps, policy_drops};
pub use remote_nodes::RemoteNodeMap;
pub use services::{CtMap, LocalNetnsMap, NodeAddrsMap, ServiceMaps};
pub use sock_destroy::destroy_udp_sockets_to;

/// The program on the node's underlay device (TC ingress): delivers packets from other nodes
/// straight into local pods.
pub const FROM_NETDEV: &str = "from_netdev";

/// The socket load-balancing programs (cgroup v2 `sock_addr` hooks), in the order they attach.
pub const SOCKET_LB_PROGRAMS: [&str; 4] = [
    "lb_connect4",
    "lb_sendmsg4",
    "lb_recvmsg4",
    "lb_getpeername4",
];

/// Where, below the pin directory, the socket programs' links are pinned: a link outlives the
/// agent only while pinned.
const LINKS_DIR: &str = "links";

/// Every filter the agent installs sits at this priority and handle, so that a restarted agent
/// replaces its predecessor's program in one netlink request (no window without a filter).
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The BPF object built from `ebpf/` by this crate's build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apiary-ebpf"));

/// Where the agent pins its maps by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/apiary";

/// Errors from loading, attaching or reading the data plane. Only [`Error::Tc`] on a vanished
/// interface is worth retrying (after the pod's veth exists again); the rest are bugs in the
/// object or missing privileges.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs { path: PathBuf },
    #[error(
        "the pin directory {path} belongs to uid {owner}, not to the agent (uid {agent}): its maps could be anyone's; remove it or fix its owner"
    )]
    PinDirOwner {
        path: PathBuf,
        owner: u32,
        agent: u32,
    },
    #[error("loading the BPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the BPF object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("no interface named {iface} in this network namespace")]
    NoInterface { iface: String },
    #[error("tc on {iface}")]
    Tc {
        iface: String,
        #[source]
        source: TcError,
    },
    #[error("reading the network namespace's cookie (SO_NETNS_COOKIE)")]
    NetnsCookie(#[source] io::Error),
    #[error("cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pinning link {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The programs attached to every pod's host-side veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodProgram {
    /// TC ingress of the host-side veth: what the pod sends.
    FromPod,
    /// TC egress of the host-side veth: what the pod receives.
    ToPod,
}

impl PodProgram {
    pub const ALL: [Self; 2] = [Self::FromPod, Self::ToPod];

    /// The program's function name in `ebpf/`, which is also the TC filter's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FromPod => "from_pod",
            Self::ToPod => "to_pod",
        }
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromPod => TcAttachType::Ingress,
            Self::ToPod => TcAttachType::Egress,
        }
    }

    const fn hook(self) -> &'static str {
        match self {
            Self::FromPod => "ingress",
            Self::ToPod => "egress",
        }
    }
}

/// The loaded programs and the pinned maps they share.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Dataplane {
    /// Loads the embedded object into the kernel, reusing the maps already pinned in `pin_dir`
    /// (so counters survive an agent restart) or pinning new ones there.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        bpffs::prepare_pin_dir(pin_dir)?;
        remove_pins(pin_dir, apiary_ebpf_common::OBSOLETE_PINNED_MAPS)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(EBPF_OBJECT)
            .map_err(Error::Load)?;
        for name in PodProgram::ALL
            .map(PodProgram::name)
            .into_iter()
            .chain([FROM_NETDEV])
        {
            classifier_by_name(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        for name in SOCKET_LB_PROGRAMS {
            sock_addr_by_name(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A loaded program, e.g. to run it on a crafted packet with `BPF_PROG_RUN`.
    pub fn program(&self, program: PodProgram) -> Result<&SchedClassifier> {
        self.program_named(program.name())
    }

    /// A loaded program by name: a [`PodProgram`]'s name or [`FROM_NETDEV`].
    pub fn program_named(&self, name: &'static str) -> Result<&SchedClassifier> {
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    /// The local pod endpoints.
    pub fn endpoints(&self) -> Result<EndpointMap> {
        EndpointMap::open(&self.pin_dir)
    }

    /// Other nodes' pod CIDRs.
    pub fn remote_nodes(&self) -> Result<RemoteNodeMap> {
        RemoteNodeMap::open(&self.pin_dir)
    }

    /// This node's settings.
    pub fn node_config(&self) -> Result<NodeConfigMap> {
        NodeConfigMap::open(&self.pin_dir)
    }

    /// Attaches [`FROM_NETDEV`] to the TC ingress of the underlay device `iface` (calling thread's
    /// network namespace), replacing a previous agent's instance atomically; returns the program id.
    pub fn attach_underlay(&mut self, iface: &str) -> Result<u32> {
        ensure_clsact(iface)?;
        attach_filter(&mut self.ebpf, FROM_NETDEV, iface, TcAttachType::Ingress)
    }

    /// The service frontends, backends and Maglev tables.
    pub fn services(&self) -> Result<ServiceMaps> {
        ServiceMaps::open(&self.pin_dir)
    }

    /// The network namespaces whose sockets this node load-balances.
    pub fn local_netns(&self) -> Result<LocalNetnsMap> {
        LocalNetnsMap::open(&self.pin_dir)
    }

    /// This node's own addresses.
    pub fn node_addrs(&self) -> Result<NodeAddrsMap> {
        NodeAddrsMap::open(&self.pin_dir)
    }

    /// Attaches the socket load-balancing programs to the cgroup v2 directory `cgroup` (the
    /// hierarchy's root serves every socket of the machine) and pins their links in the pin
    /// directory. A previous agent's links are detached only once the new ones are attached: both
    /// run for a moment, which is harmless (the second sees a backend address, no service).
    /// Returns the program ids.
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<Vec<u32>> {
        let cgroup_err = |source| Error::Cgroup {
            path: cgroup.to_owned(),
            source,
        };
        let cgroup_dir = std::fs::File::open(cgroup).map_err(cgroup_err)?;
        let links = self.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&links).map_err(|source| Error::Bpffs {
            path: links.clone(),
            source,
        })?;
        let mut ids = Vec::with_capacity(SOCKET_LB_PROGRAMS.len());
        for name in SOCKET_LB_PROGRAMS {
            let program = sock_addr_by_name(&mut self.ebpf, name)?;
            let program_err = |source| Error::Program { name, source };
            let link_id = program
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(program_err)?;
            let link: FdLink = program
                .take_link(link_id)
                .map_err(program_err)?
                .try_into()
                .map_err(|source| Error::Link {
                    path: cgroup.to_owned(),
                    source,
                })?;
            let pin = links.join(name);
            detach_pinned_link(&pin)?;
            link.pin(&pin)
                .map_err(|source| Error::PinLink { path: pin, source })?;
            ids.push(program.info().map_err(program_err)?.id());
        }
        Ok(ids)
    }

    /// The per-pod traffic counters.
    pub fn pod_traffic(&self) -> Result<PodTrafficMap> {
        PodTrafficMap::open(&self.pin_dir)
    }

    /// Attaches the pod programs to the host-side veth `iface` of the calling thread's network
    /// namespace and starts counting its traffic. Attaching again replaces the filters and keeps
    /// the counters.
    pub fn attach_pod(&mut self, iface: &str) -> Result<PodAttachment> {
        let ifindex = ifindex(iface)?;
        ensure_clsact(iface)?;
        // Register before attaching so the very first packet is counted.
        self.pod_traffic()?.register(ifindex)?;
        let mut programs = Vec::with_capacity(PodProgram::ALL.len());
        for program in PodProgram::ALL {
            let id = attach_filter(&mut self.ebpf, program.name(), iface, program.attach_type())?;
            programs.push((program, id));
        }
        Ok(PodAttachment {
            iface: iface.to_owned(),
            ifindex,
            programs,
        })
    }
}

/// Removes the pod programs from the host-side veth `iface` of the calling thread's network
/// namespace and forgets its counters. Returns the programs that were attached.
pub fn detach_pod(pin_dir: &Path, iface: &str) -> Result<Vec<PodProgram>> {
    let ifindex = ifindex(iface)?;
    let mut detached = Vec::new();
    for program in PodProgram::ALL {
        if detach_filter(iface, program).map_err(|source| Error::Tc {
            iface: iface.to_owned(),
            source,
        })? {
            detached.push(program);
        }
    }
    // Without a pinned map nothing was ever loaded with this pin directory: no counters to forget.
    if pin_dir.join(apiary_ebpf_common::POD_TRAFFIC).exists() {
        PodTrafficMap::open(pin_dir)?.unregister(ifindex)?;
    }
    Ok(detached)
}

/// Detaches the link pinned at `pin` (if any) by removing its pin; returns whether there was one.
fn detach_pinned_link(pin: &Path) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    let link = PinnedLink::from_pin(pin).map_err(|source| Error::Link {
        path: pin.to_owned(),
        source,
    })?;
    let link = link.unpin().map_err(|source| Error::Bpffs {
        path: pin.to_owned(),
        source,
    })?;
    // The last reference: dropping it detaches the program.
    drop(link);
    Ok(true)
}

/// Whether a previous agent's socket load-balancing programs are still attached (their links
/// pinned in `pin_dir`): its data plane outlived it and serves the node's pods.
pub fn socket_lb_attached(pin_dir: &Path) -> bool {
    let links = pin_dir.join(LINKS_DIR);
    SOCKET_LB_PROGRAMS
        .iter()
        .all(|name| links.join(name).exists())
}

/// Detaches the socket load-balancing programs whose links are pinned in `pin_dir`; returns the
/// pins it removed.
pub fn detach_socket_lb(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let links = pin_dir.join(LINKS_DIR);
    let mut removed = Vec::new();
    for name in SOCKET_LB_PROGRAMS {
        let pin = links.join(name);
        if detach_pinned_link(&pin)? {
            removed.push(pin);
        }
    }
    match std::fs::remove_dir(&links) {
        Ok(()) => removed.push(links),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) => {}
        Err(source) => {
            return Err(Error::Bpffs {
                path: links,
                source,
            });
        }
    }
    Ok(removed)
}

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
        let (mount, rest) = line.split_once(" - ")?;
        let fstype = rest.split(' ').next()?;
        let mut fields = mount.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mount_point))
    })
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, 5.14): what the
/// socket programs' `bpf_get_netns_cookie` returns for sockets made there.
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain syscalls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::NetnsCookie(io::Error::last_os_error()));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(Error::NetnsCookie(err));
        }
        Ok(cookie)
    }
}

/// Detaches the socket programs and removes the maps pinned in `pin_dir`, and the directory once
/// empty; returns what it removed.
///
/// TC programs still attached keep their maps alive, so call this after detaching them.
pub fn unpin(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let bpffs_err = |source| Error::Bpffs {
        path: pin_dir.to_owned(),
        source,
    };
    let mut removed = detach_socket_lb(pin_dir)?;
    removed.extend(remove_pins(pin_dir, apiary_ebpf_common::PINNED_MAPS)?);
    removed.extend(remove_pins(
        pin_dir,
        apiary_ebpf_common::OBSOLETE_PINNED_MAPS,
    )?);
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => removed.push(pin_dir.to_owned()),
        // Gone already, or something else is pinned there: leave it.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) => {}
        Err(e) => return Err(bpffs_err(e)),
    }
    Ok(removed)
}

/// Removes the pins of `maps` from `pin_dir`; returns the ones that were there.
fn remove_pins(pin_dir: &Path, maps: &[&str]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for map in maps {
        let pin = pin_dir.join(map);
        match std::fs::remove_file(&pin) {
            Ok(()) => removed.push(pin),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Bpffs {
                    path: pin_dir.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(removed)
}

/// What [`Dataplane::attach_pod`] did.
#[derive(Debug)]
pub struct PodAttachment {
    pub iface: String,
    pub ifindex: u32,
    /// Each program with its kernel program id.
    pub programs: Vec<(PodProgram, u32)>,
}

impl fmt::Display for PodAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let programs: Vec<String> = self
            .programs
            .iter()
            .map(|(program, id)| {
                format!("{} (tc {}, prog id {id})", program.name(), program.hook())
            })
            .collect();
        write!(
            f,
            "{}(ifindex {}): {}",
            self.iface,
            self.ifindex,
            programs.join(", ")
        )
    }
}

fn sock_addr_by_name<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn classifier_by_name<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

/// Adds the `clsact` qdisc to `iface` unless it has one.
fn ensure_clsact(iface: &str) -> Result<()> {
    match tc::qdisc_add_clsact(iface) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(|source| Error::Tc {
            iface: iface.to_owned(),
            source,
        }),
    }
}

/// Attaches program `name` to `iface` at the agent's fixed priority and handle. When a filter sits
/// there already (a previous agent's, or this one's), its program is replaced in place: traffic
/// never meets the hook empty. Returns the kernel program id.
fn attach_filter(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    attach_type: TcAttachType,
) -> Result<u32> {
    let classifier = classifier_by_name(ebpf, name)?;
    let program_err = |source| Error::Program { name, source };
    let options = NlOptions {
        priority: FILTER_PRIORITY,
        handle: FILTER_HANDLE,
        ..NlOptions::default()
    };
    let link_id =
        match classifier.attach_with_options(iface, attach_type, TcAttachOptions::Netlink(options))
        {
            Ok(link_id) => link_id,
            Err(ProgramError::TcError(TcError::NetlinkError(e)))
                if e.raw_os_error() == Some(libc::EEXIST) =>
            {
                let existing = SchedClassifierLink::attached(
                    iface,
                    attach_type,
                    FILTER_PRIORITY,
                    FILTER_HANDLE,
                    None,
                )
                .map_err(|source| Error::Tc {
                    iface: iface.to_owned(),
                    source: TcError::IoError(source),
                })?;
                classifier.attach_to_link(existing).map_err(program_err)?
            }
            Err(e) => return Err(program_err(e)),
        };
    // Dropping the link would detach the filter; the filter must outlive this process.
    std::mem::forget(classifier.take_link(link_id).map_err(program_err)?);
    Ok(classifier.info().map_err(program_err)?.id())
}

/// Detaches [`FROM_NETDEV`] from the underlay device `iface` (calling thread's namespace); returns
/// whether it was attached.
pub fn detach_underlay(iface: &str) -> Result<bool> {
    match tc::qdisc_detach_program(iface, TcAttachType::Ingress, FROM_NETDEV) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(source) => Err(Error::Tc {
            iface: iface.to_owned(),
            source,
        }),
    }
}

/// Detaches `program`'s filters from `iface`; `Ok(false)` when none was attached.
fn detach_filter(iface: &str, program: PodProgram) -> Result<bool, TcError> {
    match tc::qdisc_detach_program(iface, program.attach_type(), program.name()) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // No clsact qdisc on the interface: nothing of ours can be attached there.
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The interface index of `iface` in the calling thread's network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let no_interface = || Error::NoInterface {
        iface: iface.to_owned(),
    };
    let name = CString::new(iface).map_err(|_| no_interface())?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(no_interface()),
        index => Ok(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_a_bpf_elf_with_both_programs() {
        let object = aya_obj_header(EBPF_OBJECT);
        assert_eq!(object, (*b"\x7fELF", 247), "ELF magic and EM_BPF machine");
        for program in PodProgram::ALL {
            let name = program.name().as_bytes();
            assert!(
                EBPF_OBJECT.windows(name.len()).any(|w| w == name),
                "{} missing from the object",
                program.name()
            );
        }
    }

    fn aya_obj_header(object: &[u8]) -> ([u8; 4], u16) {
        let magic = object[..4].try_into().unwrap();
        let machine = u16::from_le_bytes([object[18], object[19]]);
        (magic, machine)
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let err = ifindex("apiary-nope0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no interface named apiary-nope0 in this network namespace"
        );
    }
}
