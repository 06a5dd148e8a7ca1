//! This machine as a Node: name, addresses, capacity and system info, read from the machine.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Context as _;
use serde_json::{Value, json};

/// Pods a node runs at most (the kubelet's default `maxPods`).
pub const MAX_PODS: i64 = 110;

/// What the Node object says about this machine.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub name: String,
    pub ip: Ipv4Addr,
    pub cpus: i64,
    pub memory_bytes: i64,
    pub kubelet_port: u16,
    pub labels: BTreeMap<String, String>,
}

impl NodeFacts {
    /// Reads the machine; `name` and `ip` default to the hostname and the address of the
    /// interface holding the default route (or the first non-loopback IPv4 address).
    pub fn detect(
        name: Option<String>,
        ip: Option<Ipv4Addr>,
        kubelet_port: u16,
        extra_labels: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let name = match name {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname")?
                .trim()
                .to_lowercase(),
        };
        let ip = match ip {
            Some(ip) => ip,
            None => default_ipv4()
                .context("no IPv4 address to register this node with; pass --node-ip")?,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
        let memory_bytes = meminfo_total().context("reading /proc/meminfo")?;
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), name.clone()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            (
                "kubernetes.io/arch".to_owned(),
                std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
            ),
        ]);
        labels.extend(extra_labels.iter().cloned());
        Ok(Self {
            name,
            ip,
            cpus,
            memory_bytes,
            kubelet_port,
            labels,
        })
    }

    /// Allocatable amounts in base units (cpu in cores, memory in bytes), for the downward API.
    pub fn allocatable(&self) -> BTreeMap<String, i64> {
        BTreeMap::from([
            ("cpu".to_owned(), self.cpus),
            ("memory".to_owned(), self.memory_bytes),
            ("pods".to_owned(), MAX_PODS),
        ])
    }

    /// The Node object to register.
    pub fn object(&self) -> Value {
        let resources = json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_bytes / 1024),
            "pods": MAX_PODS.to_string(),
        });
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        json!({
            "metadata": { "name": self.name, "labels": self.labels },
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    { "type": "InternalIP", "address": self.ip.to_string() },
                    { "type": "Hostname", "address": self.name },
                ],
                "daemonEndpoints": { "kubeletEndpoint": { "Port": self.kubelet_port } },
                "nodeInfo": {
                    "machineID": read_trimmed("/etc/machine-id"),
                    "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
                    "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                    "kernelVersion": kernel,
                    "osImage": os_image(),
                    "containerRuntimeVersion": concat!("apiary://", env!("CARGO_PKG_VERSION")),
                    "kubeletVersion": "v1.32.0-apiary",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                },
            },
        })
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".to_owned())
}

fn meminfo_total() -> anyhow::Result<i64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let kib: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal")?;
    Ok(kib * 1024)
}

/// The IPv4 address of the interface with the default route, else the first non-loopback one.
fn default_ipv4() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_iface = routes.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&"00000000")).then(|| cols[0].to_owned())
    });
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then_some((a.interface_name, ip))
        })
        .collect();
    default_iface
        .and_then(|iface| addrs.iter().find(|(i, _)| *i == iface).map(|(_, ip)| *ip))
        .or_else(|| addrs.first().map(|(_, ip)| *ip))
}
