//! The cluster's DNS names, computed from Services, EndpointSlices and Pods.
//!
//! This is the data half of the cluster DNS server: it answers one question at a time without
//! I/O, so every naming rule of the Kubernetes DNS specification, as CoreDNS's `kubernetes`
//! plugin serves it, is tested here without sockets. Under the cluster domain `<d>`:
//!
//! | name | records |
//! | --- | --- |
//! | `<svc>.<ns>.svc.<d>` | A/AAAA of the ClusterIPs; of the ready endpoints if headless; CNAME if ExternalName |
//! | `<ep>.<svc>.<ns>.svc.<d>` | A/AAAA of one ready endpoint; `<ep>` is its hostname, else its dashed address |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<d>` | SRV of a named port (per ready endpoint if headless) |
//! | `<a-b-c-d>.<ns>.pod.<d>` | A of a pod of that namespace with that address (CoreDNS `pods verified`) |
//! | `d.c.b.a.in-addr.arpa` | PTR to a service, else an endpoint with a hostname, else a pod |
//!
//! Objects are reduced to what DNS needs when they are applied; lookups scan them, which is
//! cheaper than keeping indexes right for the few thousand objects a cluster of this size has.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use apiary_api::{
    core_v1::{Pod, Service},
    discovery_v1::EndpointSlice,
};
use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, PTR, SOA, SRV},
};
use serde::{Deserialize, Serialize};

/// The cluster domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// Time to live of every answer, CoreDNS's default: endpoints change often, caches must follow.
pub const TTL: u32 = 5;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The outcome of one lookup in [`ClusterRecords`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The records of the asked type (or the CNAME of an ExternalName service, whatever the type);
    /// `additionals` holds the addresses of SRV targets.
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists but has no records of the asked type (NOERROR, empty answer).
    NoData,
    /// The name is in the cluster domain but does not exist.
    NxDomain,
    /// Not a cluster name, nor the reverse name of a cluster address: ask the upstream servers.
    NotCluster,
}

/// Everything the cluster DNS server answers from, fed with API objects as they change.
///
/// It serializes whole: the agent sends it to the cluster DNS process as a snapshot
/// ([`super::feed`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterRecords {
    /// Lower-case labels of the cluster domain, e.g. `["cluster", "local"]`.
    domain: Vec<String>,
    /// Bumped on every change: the SOA serial, so secondaries and caches can tell.
    serial: u32,
    /// `(namespace, name)` → the service.
    #[serde(with = "pairs")]
    services: BTreeMap<(String, String), ServiceEntry>,
    /// `(namespace, service, slice name)` → the slice: a service's slices are one range.
    #[serde(with = "pairs")]
    slices: BTreeMap<(String, String, String), SliceEntry>,
    /// `(namespace, slice name)` → service, to find a slice again when its label changes or it
    /// is deleted by name.
    #[serde(with = "pairs")]
    slice_service: HashMap<(String, String), String>,
    /// `(namespace, name)` → the pod's addresses.
    #[serde(with = "pairs")]
    pods: BTreeMap<(String, String), Vec<IpAddr>>,
}

/// Maps with tuple keys, serialized as lists of `[key, value]`: JSON keys can only be strings.
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<'a, M, K, V, S>(map: &'a M, serializer: S) -> Result<S::Ok, S::Error>
    where
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
        S: Serializer,
    {
        serializer.collect_seq(map)
    }

    pub fn deserialize<'de, M, K, V, D>(deserializer: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

/// A domain name as its text (`example.com.`).
mod name_text {
    use hickory_proto::rr::Name;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(name: &Name, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut name = Name::from_ascii(&text).map_err(D::Error::custom)?;
        name.set_fqdn(true);
        Ok(name)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ServiceEntry {
    kind: ServiceKind,
    ports: Vec<PortEntry>,
    /// `publishNotReadyAddresses`: not-ready endpoints are published too (StatefulSet peers
    /// finding each other before they are ready).
    publish_not_ready: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(#[serde(with = "name_text")] Name),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PortEntry {
    /// Lower case; empty for the unnamed port of a single-port service.
    name: String,
    /// `tcp`, `udp` or `sctp`.
    protocol: String,
    port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SliceEntry {
    endpoints: Vec<EndpointEntry>,
    ports: Vec<PortEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct EndpointEntry {
    addresses: Vec<IpAddr>,
    /// Lower case.
    hostname: Option<String>,
    ready: bool,
}

impl EndpointEntry {
    /// The endpoint's own DNS labels, one per address: its hostname, else the dashed address.
    fn labels(&self) -> impl Iterator<Item = (String, IpAddr)> + '_ {
        self.addresses.iter().map(|ip| {
            let label = self.hostname.clone().unwrap_or_else(|| dashed(*ip));
            (label, *ip)
        })
    }
}

/// The records of one existing name, before they are filtered by the asked type.
#[derive(Default)]
struct Node {
    addresses: Vec<IpAddr>,
    cname: Option<Name>,
    /// `(port, target)`, with the target's addresses in `srv_targets`.
    srv: Vec<(u16, Name)>,
    srv_targets: Vec<(Name, IpAddr)>,
    ptr: Vec<Name>,
    /// The zone apex: it has the SOA.
    apex: bool,
}

impl Default for ClusterRecords {
    fn default() -> Self {
        Self::new(DEFAULT_DOMAIN)
    }
}

impl ClusterRecords {
    /// Empty records for the cluster domain `domain` (e.g. `cluster.local`; case and a trailing
    /// dot do not matter).
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain
                .trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .map(str::to_ascii_lowercase)
                .collect(),
            serial: 1,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slice_service: HashMap::new(),
            pods: BTreeMap::new(),
        }
    }

    /// The cluster domain, without a trailing dot.
    pub fn domain(&self) -> String {
        self.domain.join(".")
    }

    /// Changes with every change to the records (the SOA serial): whoever copies them elsewhere
    /// can tell whether its copy is current.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Adds or replaces a service.
    pub fn apply_service(&mut self, service: &Service) {
        let spec = &service.spec;
        let kind = if spec.type_ == "ExternalName" {
            match Name::from_ascii(&spec.external_name) {
                Ok(mut target) if !spec.external_name.is_empty() => {
                    target.set_fqdn(true);
                    ServiceKind::ExternalName(target)
                }
                // Validation rejects these; serve nothing rather than a broken CNAME.
                _ => ServiceKind::ClusterIp(Vec::new()),
            }
        } else if spec.cluster_ip == "None" {
            ServiceKind::Headless
        } else {
            let ips = if spec.cluster_ips.is_empty() {
                std::slice::from_ref(&spec.cluster_ip)
            } else {
                &spec.cluster_ips[..]
            };
            ServiceKind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        };
        let ports = spec
            .ports
            .iter()
            .filter_map(|p| port_entry(Some(&p.name), Some(&p.protocol), Some(p.port)))
            .collect();
        let entry = ServiceEntry {
            kind,
            ports,
            publish_not_ready: spec.publish_not_ready_addresses,
        };
        self.services.insert(
            key(&service.metadata.namespace, &service.metadata.name),
            entry,
        );
        self.changed();
    }

    /// Removes a service; its slices stay until they are deleted too, as in the API.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        if self.services.remove(&key(namespace, name)).is_some() {
            self.changed();
        }
    }

    /// Adds or replaces an EndpointSlice, filed under its `kubernetes.io/service-name` label.
    /// Slices without the label, or of FQDN addresses, serve nothing (as in CoreDNS).
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) {
        let (namespace, name) = key(&slice.metadata.namespace, &slice.metadata.name);
        self.remove_slice(&namespace, &name);
        let service = slice.metadata.labels.get(SERVICE_NAME_LABEL);
        if let Some(service) = service.filter(|_| slice.address_type != "FQDN") {
            let service = service.to_ascii_lowercase();
            let entry = SliceEntry {
                endpoints: slice
                    .endpoints
                    .iter()
                    .map(|e| EndpointEntry {
                        addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                        hostname: e.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
                        ready: e.conditions.ready.unwrap_or(true),
                    })
                    .collect(),
                ports: slice
                    .ports
                    .iter()
                    .filter_map(|p| port_entry(p.name.as_deref(), p.protocol.as_deref(), p.port))
                    .collect(),
            };
            self.slices
                .insert((namespace.clone(), service.clone(), name.clone()), entry);
            self.slice_service.insert((namespace, name), service);
        }
        self.changed();
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) {
        let (namespace, name) = key(namespace, name);
        if self.remove_slice(&namespace, &name) {
            self.changed();
        }
    }

    /// Adds or replaces a pod. Pods that have finished (`Succeeded`, `Failed`) have given their
    /// addresses back and serve nothing.
    pub fn apply_pod(&mut self, pod: &Pod) {
        let key = key(&pod.metadata.namespace, &pod.metadata.name);
        let status = pod.status.as_ref();
        let finished = status.is_some_and(|s| matches!(s.phase.as_str(), "Succeeded" | "Failed"));
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(status) = status.filter(|_| !finished) {
            let all = status.pod_ips.iter().map(|p| &p.ip).chain([&status.pod_ip]);
            for ip in all.filter_map(|ip| ip.parse().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        if ips.is_empty() {
            self.delete_pod(&key.0, &key.1);
        } else {
            self.pods.insert(key, ips);
            self.changed();
        }
    }

    /// Removes a pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        if self.pods.remove(&key(namespace, name)).is_some() {
            self.changed();
        }
    }

    /// Answers the question `name`/`rtype` (case-insensitive), as CoreDNS's `kubernetes` plugin
    /// would. A CNAME (ExternalName) whose target is in the cluster domain comes with the
    /// target's records too, as an authoritative server follows a chain within its zone
    /// (RFC 1034 §4.3.2): simple stub resolvers (busybox's `nslookup`) do not follow it.
    pub fn resolve(&self, name: &Name, rtype: RecordType) -> Answer {
        let mut answer = self.resolve_name(name, rtype);
        if rtype == RecordType::CNAME {
            return answer;
        }
        // Bounded: ExternalNames may point at each other in a loop.
        for _ in 0..8 {
            let Answer::Records { answers, .. } = &mut answer else {
                break;
            };
            let Some(target) = answers.last().and_then(|r| match &r.data {
                RData::CNAME(CNAME(target)) => Some(target.clone()),
                _ => None,
            }) else {
                break;
            };
            if !self.in_domain(&target) {
                break;
            }
            match self.resolve_name(&target, rtype) {
                Answer::Records { answers: more, .. } => answers.extend(more),
                _ => break,
            }
        }
        answer
    }

    fn resolve_name(&self, name: &Name, rtype: RecordType) -> Answer {
        let labels: Vec<String> = name
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        if let Some(ip) = reverse_address(&labels) {
            let targets = self.reverse(ip);
            if targets.is_empty() {
                return Answer::NotCluster;
            }
            let node = Node {
                ptr: targets,
                ..Node::default()
            };
            return node.select(self, name, rtype);
        }
        let Some(rest) = labels.strip_suffix(&self.domain[..]) else {
            return Answer::NotCluster;
        };
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match self.node(&rest) {
            Some(node) => node.select(self, name, rtype),
            None => Answer::NxDomain,
        }
    }

    /// The SOA record of the cluster domain, for the authority section of negative answers.
    /// Its minimum (the negative-caching time) is [`TTL`].
    pub fn soa(&self) -> Record {
        let apex = self.fqdn(&[]);
        let soa = SOA::new(
            self.fqdn(&["ns", "dns"]),
            self.fqdn(&["hostmaster"]),
            self.serial,
            7200,
            1800,
            86400,
            TTL,
        );
        Record::from_rdata(apex, TTL, RData::SOA(soa))
    }

    /// Whether `name` is the cluster domain or below it.
    pub fn in_domain(&self, name: &Name) -> bool {
        self.fqdn(&[]).zone_of(name)
    }

    fn changed(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    fn remove_slice(&mut self, namespace: &str, name: &str) -> bool {
        let slice_key = (namespace.to_owned(), name.to_owned());
        match self.slice_service.remove(&slice_key) {
            Some(service) => {
                let (namespace, name) = slice_key;
                self.slices.remove(&(namespace, service, name)).is_some()
            }
            None => false,
        }
    }

    /// The absolute name `<labels>.<domain>.`.
    fn fqdn(&self, labels: &[&str]) -> Name {
        let labels = labels
            .iter()
            .copied()
            .chain(self.domain.iter().map(String::as_str));
        let mut name = Name::from_labels(labels).unwrap_or_else(|_| Name::root());
        name.set_fqdn(true);
        name
    }

    /// The records of the cluster name whose labels before the domain are `rest`, or `None` if
    /// there is no such name.
    fn node(&self, rest: &[&str]) -> Option<Node> {
        let exists = |yes: bool| yes.then(Node::default);
        match rest {
            [] => Some(Node {
                apex: true,
                ..Node::default()
            }),
            // Empty non-terminals exist while something is below them.
            ["svc"] => exists(!self.services.is_empty()),
            [ns, "svc"] => exists(self.namespace_services(ns).next().is_some()),
            [svc, ns, "svc"] => self.service_node(ns, svc),
            [proto, svc, ns, "svc"] if proto.starts_with('_') => {
                let proto = &proto[1..];
                let service = self.services.get(&key(ns, svc))?;
                let named = |p: &PortEntry| !p.name.is_empty() && p.protocol == proto;
                let has = match service.kind {
                    ServiceKind::ClusterIp(_) => service.ports.iter().any(named),
                    ServiceKind::Headless => self
                        .service_slices(ns, svc)
                        .any(|s| s.ports.iter().any(named)),
                    ServiceKind::ExternalName(_) => false,
                };
                exists(has)
            }
            [endpoint, svc, ns, "svc"] => self.endpoint_node(ns, svc, endpoint),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv_node(ns, svc, Some((&port[1..], &proto[1..])))
            }
            ["pod"] => exists(!self.pods.is_empty()),
            [ns, "pod"] => exists(self.namespace_pods(ns).next().is_some()),
            [address, ns, "pod"] => {
                let ip = undashed(address)?;
                let found = self.namespace_pods(ns).any(|ips| ips.contains(&ip));
                found.then(|| Node {
                    addresses: vec![ip],
                    ..Node::default()
                })
            }
            _ => None,
        }
    }

    fn service_node(&self, ns: &str, svc: &str) -> Option<Node> {
        let service = self.services.get(&key(ns, svc))?;
        match &service.kind {
            ServiceKind::ExternalName(target) => Some(Node {
                cname: Some(target.clone()),
                ..Node::default()
            }),
            ServiceKind::ClusterIp(ips) => {
                let mut node = self.srv_node(ns, svc, None).unwrap_or_default();
                node.addresses = ips.clone();
                Some(node)
            }
            ServiceKind::Headless => {
                // As CoreDNS: a headless service without ready endpoints has no name.
                let addresses: Vec<IpAddr> = self
                    .ready_endpoints(ns, svc, service)
                    .flat_map(|e| e.addresses.iter().copied())
                    .collect();
                if addresses.is_empty() {
                    return None;
                }
                let mut node = self.srv_node(ns, svc, None).unwrap_or_default();
                node.addresses = addresses;
                Some(node)
            }
        }
    }

    /// `<endpoint>.<svc>.<ns>.svc`: the ready endpoints of the service called `endpoint`.
    fn endpoint_node(&self, ns: &str, svc: &str, endpoint: &str) -> Option<Node> {
        let service = self.services.get(&key(ns, svc))?;
        if matches!(service.kind, ServiceKind::ExternalName(_)) {
            return None;
        }
        let addresses: Vec<IpAddr> = self
            .ready_endpoints(ns, svc, service)
            .flat_map(EndpointEntry::labels)
            .filter(|(label, _)| label == endpoint)
            .map(|(_, ip)| ip)
            .collect();
        (!addresses.is_empty()).then(|| Node {
            addresses,
            ..Node::default()
        })
    }

    /// SRV records of a service's ports: those named `port` with protocol `proto`, or all of them
    /// (an SRV question for the service name itself). `None` when there are none.
    fn srv_node(&self, ns: &str, svc: &str, port: Option<(&str, &str)>) -> Option<Node> {
        let service = self.services.get(&key(ns, svc))?;
        let wanted =
            |p: &PortEntry| port.is_none_or(|(name, proto)| p.name == name && p.protocol == proto);
        let service_name = self.fqdn(&[svc, ns, "svc"]);
        let mut node = Node::default();
        match &service.kind {
            ServiceKind::ExternalName(_) => return None,
            ServiceKind::ClusterIp(ips) => {
                for p in service.ports.iter().filter(|p| wanted(p)) {
                    node.srv.push((p.port, service_name.clone()));
                }
                if !node.srv.is_empty() {
                    node.srv_targets = ips.iter().map(|ip| (service_name.clone(), *ip)).collect();
                }
            }
            ServiceKind::Headless => {
                for slice in self.service_slices(ns, svc) {
                    let ports: Vec<&PortEntry> = slice.ports.iter().filter(|p| wanted(p)).collect();
                    if ports.is_empty() {
                        continue;
                    }
                    let ready = slice
                        .endpoints
                        .iter()
                        .filter(|e| e.ready || service.publish_not_ready);
                    for (label, ip) in ready.flat_map(EndpointEntry::labels) {
                        let target = self.fqdn(&[&label, svc, ns, "svc"]);
                        for p in &ports {
                            node.srv.push((p.port, target.clone()));
                        }
                        node.srv_targets.push((target, ip));
                    }
                }
            }
        }
        (!node.srv.is_empty()).then_some(node)
    }

    /// Reverse lookup: the names of `ip`, services first, then endpoints with hostnames, then
    /// pods (the first kind that has it wins, so a StatefulSet pod is called by its stable name).
    fn reverse(&self, ip: IpAddr) -> Vec<Name> {
        let services: Vec<Name> = self
            .services
            .iter()
            .filter(|(_, s)| matches!(&s.kind, ServiceKind::ClusterIp(ips) if ips.contains(&ip)))
            .map(|((ns, svc), _)| self.fqdn(&[svc, ns, "svc"]))
            .collect();
        if !services.is_empty() {
            return services;
        }
        let mut endpoints = Vec::new();
        for ((ns, svc, _), slice) in &self.slices {
            let Some(service) = self.services.get(&(ns.clone(), svc.clone())) else {
                continue;
            };
            let ready = slice
                .endpoints
                .iter()
                .filter(|e| e.ready || service.publish_not_ready);
            for endpoint in ready.filter(|e| e.addresses.contains(&ip)) {
                if let Some(hostname) = &endpoint.hostname {
                    let name = self.fqdn(&[hostname, svc, ns, "svc"]);
                    if !endpoints.contains(&name) {
                        endpoints.push(name);
                    }
                }
            }
        }
        if !endpoints.is_empty() {
            return endpoints;
        }
        let mut pods: Vec<Name> = Vec::new();
        for ((ns, _), ips) in &self.pods {
            let name = self.fqdn(&[&dashed(ip), ns, "pod"]);
            if ips.contains(&ip) && !pods.contains(&name) {
                pods.push(name);
            }
        }
        pods
    }

    fn namespace_services<'a>(&'a self, ns: &str) -> impl Iterator<Item = &'a ServiceEntry> + 'a {
        let start = (ns.to_ascii_lowercase(), String::new());
        let ns = start.0.clone();
        self.services
            .range(start..)
            .take_while(move |((n, _), _)| *n == ns)
            .map(|(_, s)| s)
    }

    fn namespace_pods<'a>(&'a self, ns: &str) -> impl Iterator<Item = &'a Vec<IpAddr>> + 'a {
        let start = (ns.to_ascii_lowercase(), String::new());
        let ns = start.0.clone();
        self.pods
            .range(start..)
            .take_while(move |((n, _), _)| *n == ns)
            .map(|(_, p)| p)
    }

    fn service_slices<'a>(
        &'a self,
        ns: &str,
        svc: &str,
    ) -> impl Iterator<Item = &'a SliceEntry> + 'a {
        let start = (ns.to_owned(), svc.to_owned(), String::new());
        let (ns, svc) = (start.0.clone(), start.1.clone());
        self.slices
            .range(start..)
            .take_while(move |((n, s, _), _)| *n == ns && *s == svc)
            .map(|(_, slice)| slice)
    }

    fn ready_endpoints<'a>(
        &'a self,
        ns: &str,
        svc: &str,
        service: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a EndpointEntry> + 'a {
        self.service_slices(ns, svc)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.ready || service.publish_not_ready)
    }
}

impl Node {
    /// The records of this name that answer `rtype`, owned by `owner` (the question's name).
    fn select(self, records: &ClusterRecords, owner: &Name, rtype: RecordType) -> Answer {
        let mut owner = owner.clone();
        owner.set_fqdn(true);
        let record = |data: RData| Record::from_rdata(owner.clone(), TTL, data);
        // A CNAME answers every type: the client follows it (RFC 1034 §3.6.2).
        if let Some(target) = self.cname {
            return Answer::Records {
                answers: vec![record(RData::CNAME(CNAME(target)))],
                additionals: Vec::new(),
            };
        }
        let any = rtype == RecordType::ANY;
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        for ip in &self.addresses {
            match ip {
                IpAddr::V4(v4) if any || rtype == RecordType::A => {
                    answers.push(record(RData::A(A(*v4))))
                }
                IpAddr::V6(v6) if any || rtype == RecordType::AAAA => {
                    answers.push(record(RData::AAAA(AAAA(*v6))))
                }
                _ => {}
            }
        }
        if (any || rtype == RecordType::SRV) && !self.srv.is_empty() {
            // Equal shares, as CoreDNS weighs the records of one answer.
            let weight = (100 / self.srv.len()).max(1) as u16;
            for (port, target) in self.srv {
                answers.push(record(RData::SRV(SRV::new(0, weight, port, target))));
            }
            for (target, ip) in self.srv_targets {
                let data = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                additionals.push(Record::from_rdata(target, TTL, data));
            }
        }
        if any || rtype == RecordType::PTR {
            answers.extend(
                self.ptr
                    .into_iter()
                    .map(|target| record(RData::PTR(PTR(target)))),
            );
        }
        if self.apex && (any || rtype == RecordType::SOA) {
            let mut soa = records.soa();
            soa.name = owner.clone();
            answers.push(soa);
        }
        if answers.is_empty() {
            Answer::NoData
        } else {
            Answer::Records {
                answers,
                additionals,
            }
        }
    }
}

/// The map key of a namespaced object: DNS names are case-insensitive, object names lower case.
fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_ascii_lowercase(), name.to_ascii_lowercase())
}

fn port_entry(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<PortEntry> {
    let protocol = match protocol.unwrap_or_default() {
        "" => "tcp".to_owned(),
        p => p.to_ascii_lowercase(),
    };
    Some(PortEntry {
        name: name.unwrap_or_default().to_ascii_lowercase(),
        protocol,
        port: u16::try_from(port?).ok()?,
    })
}

/// `10.244.1.5` → `10-244-1-5`; `fd00::1` → `fd00--1` (CoreDNS's endpoint and pod labels).
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The inverse of [`dashed`]: four dashed decimals, else an IPv6 address with `-` for `:`.
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address of a complete reverse name: `d.c.b.a.in-addr.arpa` or the 32 nibbles of
/// `….ip6.arpa`.
fn reverse_address(labels: &[String]) -> Option<IpAddr> {
    match labels {
        [d, c, b, a, in_addr, arpa] if in_addr == "in-addr" && arpa == "arpa" => {
            // Only canonical decimals: `01` or `+1` would be another name for the same address.
            let octet = |s: &String| -> Option<u8> {
                let canonical =
                    s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
                canonical.then(|| s.parse().ok()).flatten()
            };
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa] if ip6 == "ip6" && arpa == "arpa" && nibbles.len() == 32 => {
            let mut value: u128 = 0;
            for nibble in nibbles.iter().rev() {
                let [digit] = nibble.as_bytes() else {
                    return None;
                };
                value = value << 4 | u128::from((*digit as char).to_digit(16)? as u8);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
