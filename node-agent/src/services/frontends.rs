//! What the service maps must hold on one node: every frontend (an address, port and protocol a
//! client may use, in a scope) with its backends, from the Services and EndpointSlices of the
//! cluster, by the rules kube-proxy follows.
//!
//! - ClusterIPs (`spec.clusterIPs`, IPv4) × ports → [`SCOPE_SOCKET`] frontends. Headless and
//!   `ExternalName` services have none.
//! - NodePorts (`NodePort` and `LoadBalancer` services): `0.0.0.0:nodePort` in both scopes.
//! - Load-balancer ingress IPs (`LoadBalancer` services, unless `ipMode: Proxy`) and `spec.externalIPs` (any type with a
//!   ClusterIP, as in Kubernetes) × ports → frontends in both scopes.
//!
//! Backends: the ready endpoints of the service's slices (`ready` unset counts as ready); when
//! none is ready, the serving and terminating ones (KEP-1669). [`SCOPE_SOCKET`] frontends of
//! NodePorts and external addresses use all of them: kube-proxy sends traffic from the node and
//! its pods to external addresses of a service through its cluster endpoints. ClusterIPs honour
//! `internalTrafficPolicy: Local`, and [`SCOPE_EXTERNAL`] frontends `externalTrafficPolicy:
//! Local`: only this node's endpoints (ready ones, or else its serving and terminating ones),
//! flagged [`SERVICE_LOCAL`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use apiary_api::{
    core_v1::{Service, ServicePort},
    discovery_v1::{Endpoint, EndpointSlice},
};
use apiary_ebpf_common::{
    Backend, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_SOCKET, SERVICE_AFFINITY,
    SERVICE_LOCAL, ServiceKey,
};

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset: three hours, as Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;

/// Every frontend this node serves, sorted by key, one per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Sorted by [`Frontend::key`], keys unique.
    pub frontends: Vec<Frontend>,
}

/// One frontend: a [`ServiceKey`] and what its `SERVICES` value and Maglev table must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The `SERVICES` key: address, port (network byte order), protocol and scope.
    pub key: ServiceKey,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// Seconds of `ClientIP` affinity; 0 without [`SERVICE_AFFINITY`].
    pub affinity_timeout_secs: u32,
    /// Where it comes from, for display and logs.
    pub service: ServicePortName,
    /// Which of the service's addresses it is, for display.
    pub kind: FrontendKind,
    /// Sorted, without duplicates; empty when the service has no usable endpoint here
    /// (connections are then refused).
    pub backends: Vec<Backend>,
}

/// A port of a Service, as kube-proxy names it (`namespace/name:port`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The service port's name; empty for a single unnamed port.
    pub port: String,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Which address of a Service a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// One of `spec.clusterIPs`.
    ClusterIp,
    /// `0.0.0.0:nodePort`.
    NodePort,
    /// One of `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
    /// One of `spec.externalIPs`.
    ExternalIp,
}

/// The frontends of `services` on the node `node_name`, with backends from `slices` (a slice
/// belongs to the Service its `kubernetes.io/service-name` label names, in its namespace).
///
/// Two services claiming one frontend (e.g. the same external IP and port) cannot both have it:
/// the one first by namespace, name and port name wins, so every node picks the same.
pub fn desired(services: &[Service], slices: &[EndpointSlice], node_name: &str) -> Desired {
    let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if let Some(service) = slice.metadata.labels.get(SERVICE_NAME_LABEL) {
            slices_of
                .entry((slice.metadata.namespace.as_str(), service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let mut frontends: BTreeMap<ServiceKey, Frontend> = BTreeMap::new();
    for service in services {
        let meta = &service.metadata;
        let slices = slices_of
            .get(&(meta.namespace.as_str(), meta.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for frontend in service_frontends(service, slices, node_name) {
            match frontends.entry(frontend.key) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(frontend);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if frontend.service < e.get().service {
                        e.insert(frontend);
                    }
                }
            }
        }
    }
    Desired {
        frontends: frontends.into_values().collect(),
    }
}

/// The IP protocol number of a Kubernetes protocol name (empty: TCP).
fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "" | "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

fn port_u16(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// What the data plane needs to know about one endpoint of one port.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    backend: Backend,
    ready: bool,
    serving_terminating: bool,
    local: bool,
}

impl Candidate {
    fn of(endpoint: &Endpoint, backend: Backend, node_name: &str) -> Self {
        let c = &endpoint.conditions;
        // Kubernetes: unset `ready` and `serving` mean true, unset `terminating` false.
        let ready = c.ready.unwrap_or(true);
        let serving = c.serving.unwrap_or(true);
        let terminating = c.terminating.unwrap_or(false);
        Self {
            backend,
            ready,
            serving_terminating: serving && terminating,
            local: endpoint.node_name.as_deref() == Some(node_name),
        }
    }
}

/// The endpoints of `port` in `slices`: each endpoint's address with the slice port of the same
/// name and protocol. Only the first address of an endpoint is used: the API documents them as
/// fungible, and kube-proxy uses the first (more would weigh the endpoint more).
fn candidates(
    port: &ServicePort,
    protocol: u8,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(target) = slice.ports.iter().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or_default() == port.name;
            let same_protocol = protocol_number(p.protocol.as_deref().unwrap_or_default());
            (same_name && same_protocol == Some(protocol))
                .then(|| p.port.and_then(port_u16))
                .flatten()
        }) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(addr) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let backend = Backend {
                addr: addr.octets(),
                port_be: target.to_be(),
                protocol,
                flags: 0,
            };
            candidates.push(Candidate::of(endpoint, backend, node_name));
        }
    }
    candidates
}

/// Ready candidates (of those `keep` accepts); when none is, the serving and terminating ones.
fn usable(candidates: &[Candidate], keep: impl Fn(&Candidate) -> bool) -> Vec<Backend> {
    let kept: Vec<&Candidate> = candidates.iter().filter(|c| keep(c)).collect();
    let ready: BTreeSet<Backend> = kept.iter().filter(|c| c.ready).map(|c| c.backend).collect();
    let chosen = if ready.is_empty() {
        kept.iter()
            .filter(|c| c.serving_terminating)
            .map(|c| c.backend)
            .collect()
    } else {
        ready
    };
    chosen.into_iter().collect()
}

fn ipv4(text: &str) -> Option<[u8; 4]> {
    text.parse::<Ipv4Addr>().ok().map(|a| a.octets())
}

fn service_frontends(
    service: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Vec<Frontend> {
    let spec = &service.spec;
    if spec.type_ == "ExternalName" {
        return Vec::new();
    }
    let cluster_ips: Vec<&str> = if spec.cluster_ips.is_empty() {
        vec![spec.cluster_ip.as_str()]
    } else {
        spec.cluster_ips.iter().map(String::as_str).collect()
    };
    // Headless (`None`) or not allocated yet: kube-proxy does not serve it at all.
    if cluster_ips.iter().all(|ip| ip.is_empty() || *ip == "None") {
        return Vec::new();
    }
    let has_node_ports = matches!(spec.type_.as_str(), "NodePort" | "LoadBalancer");
    let mut external_ips: Vec<(FrontendKind, [u8; 4])> = spec
        .external_ips
        .iter()
        .filter_map(|ip| Some((FrontendKind::ExternalIp, ipv4(ip)?)))
        .collect();
    if spec.type_ == "LoadBalancer" {
        // `ipMode: Proxy`: the load balancer proxies to the NodePorts itself, and packets
        // arrive addressed to the node, so kube-proxy leaves the address alone.
        let ingress = service
            .status
            .iter()
            .flat_map(|s| &s.load_balancer.ingress)
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"));
        external_ips
            .extend(ingress.filter_map(|i| Some((FrontendKind::LoadBalancer, ipv4(&i.ip)?))));
    }
    let affinity = spec.session_affinity == "ClientIP";
    let (affinity_flag, affinity_timeout_secs) = if affinity {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS);
        (SERVICE_AFFINITY, timeout)
    } else {
        (0, 0)
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy == "Local";

    let mut frontends = Vec::new();
    for port in &spec.ports {
        let (Some(protocol), Some(port_number)) =
            (protocol_number(&port.protocol), port_u16(port.port))
        else {
            continue;
        };
        let candidates = candidates(port, protocol, slices, node_name);
        let cluster = usable(&candidates, |_| true);
        let local = usable(&candidates, |c| c.local);
        let service_port = ServicePortName {
            namespace: service.metadata.namespace.clone(),
            name: service.metadata.name.clone(),
            port: port.name.clone(),
        };
        let mut add = |kind, addr, port: u16, scope, local_only: bool| {
            let (flags, backends) = if local_only {
                (affinity_flag | SERVICE_LOCAL, local.clone())
            } else {
                (affinity_flag, cluster.clone())
            };
            frontends.push(Frontend {
                key: ServiceKey {
                    addr,
                    port_be: port.to_be(),
                    protocol,
                    scope,
                },
                flags,
                affinity_timeout_secs,
                service: service_port.clone(),
                kind,
                backends,
            });
        };
        for ip in cluster_ips.iter().filter_map(|ip| ipv4(ip)) {
            add(
                FrontendKind::ClusterIp,
                ip,
                port_number,
                SCOPE_SOCKET,
                internal_local,
            );
        }
        if let Some(node_port) = port_u16(port.node_port).filter(|_| has_node_ports) {
            add(
                FrontendKind::NodePort,
                [0; 4],
                node_port,
                SCOPE_SOCKET,
                false,
            );
            add(
                FrontendKind::NodePort,
                [0; 4],
                node_port,
                SCOPE_EXTERNAL,
                external_local,
            );
        }
        for &(kind, ip) in &external_ips {
            add(kind, ip, port_number, SCOPE_SOCKET, false);
            add(kind, ip, port_number, SCOPE_EXTERNAL, external_local);
        }
    }
    frontends
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn service(spec: Value) -> Service {
        service_with_status(spec, Value::Null)
    }

    fn service_with_status(spec: Value, status: Value) -> Service {
        apiary_api::meta::from_json(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        apiary_api::meta::from_json(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": "default",
                "labels": { "kubernetes.io/service-name": service },
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// An endpoint on `node` with the given conditions.
    fn ep(ip: &str, node: &str, conditions: Value) -> Value {
        json!({ "addresses": [ip], "nodeName": node, "conditions": conditions })
    }

    fn ready(ip: &str, node: &str) -> Value {
        ep(ip, node, json!({ "ready": true }))
    }

    fn http_slice(endpoints: Value) -> EndpointSlice {
        slice(
            "web-1",
            "web",
            json!([{ "name": "http", "port": 8080, "protocol": "TCP" }]),
            endpoints,
        )
    }

    fn key(addr: [u8; 4], port: u16, protocol: u8, scope: u8) -> ServiceKey {
        ServiceKey {
            addr,
            port_be: port.to_be(),
            protocol,
            scope,
        }
    }

    fn tcp(addr: [u8; 4], port: u16) -> Backend {
        Backend {
            addr,
            port_be: port.to_be(),
            protocol: PROTO_TCP,
            flags: 0,
        }
    }

    fn find(desired: &Desired, key: ServiceKey) -> &Frontend {
        desired
            .frontends
            .iter()
            .find(|f| f.key == key)
            .unwrap_or_else(|| panic!("no frontend {key:?} in {desired:#?}"))
    }

    fn keys(desired: &Desired) -> Vec<ServiceKey> {
        desired.frontends.iter().map(|f| f.key).collect()
    }

    const VIP: [u8; 4] = [10, 96, 0, 10];

    fn cluster_ip_web() -> Service {
        service(json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }],
        }))
    }

    #[test]
    fn cluster_ip_port_is_a_socket_frontend_with_ready_endpoints() {
        let slices = [http_slice(json!([
            ready("10.244.1.2", "n1"),
            ep("10.244.2.2", "n2", json!({})),
            ep("10.244.3.2", "n3", json!({ "ready": false })),
        ]))];
        let desired = desired(&[cluster_ip_web()], &slices, "n1");
        assert_eq!(keys(&desired), [key(VIP, 80, PROTO_TCP, SCOPE_SOCKET)]);
        let frontend = &desired.frontends[0];
        assert_eq!(frontend.flags, 0);
        assert_eq!(frontend.affinity_timeout_secs, 0);
        assert_eq!(frontend.kind, FrontendKind::ClusterIp);
        assert_eq!(frontend.service.to_string(), "default/web:http");
        // Unset `ready` counts as ready; `ready: false` gets no connection.
        assert_eq!(
            frontend.backends,
            [tcp([10, 244, 1, 2], 8080), tcp([10, 244, 2, 2], 8080)]
        );
    }

    #[test]
    fn every_ipv4_cluster_ip_times_every_port() {
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "10.96.0.11", "fd00::10"],
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP" },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                { "name": "sctp", "port": 9, "protocol": "SCTP" },
            ],
        }));
        let desired = desired(&[svc], &[], "n1");
        let mut want = Vec::new();
        for ip in [VIP, [10, 96, 0, 11]] {
            want.push(key(ip, 53, PROTO_UDP, SCOPE_SOCKET));
            want.push(key(ip, 53, PROTO_TCP, SCOPE_SOCKET));
            want.push(key(ip, 9, PROTO_SCTP, SCOPE_SOCKET));
        }
        want.sort();
        assert_eq!(keys(&desired), want);
        // No slices: frontends without backends (connections refused).
        assert!(desired.frontends.iter().all(|f| f.backends.is_empty()));
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontends() {
        let headless = service(json!({
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "ports": [{ "port": 80 }],
        }));
        let external = service(json!({
            "type": "ExternalName",
            "externalName": "example.com",
            "ports": [{ "port": 80 }],
        }));
        let slices = [slice(
            "web-1",
            "web",
            json!([{ "port": 80 }]),
            json!([ready("10.244.1.2", "n1")]),
        )];
        assert!(desired(&[headless], &slices, "n1").frontends.is_empty());
        assert!(desired(&[external], &slices, "n1").frontends.is_empty());
    }

    #[test]
    fn slice_ports_match_by_name_and_protocol() {
        let svc = service(json!({
            "clusterIPs": ["10.96.0.10"],
            "ports": [
                { "name": "http", "port": 80 },
                { "name": "dns", "port": 53, "protocol": "UDP" },
            ],
        }));
        let slices = [
            slice(
                "web-1",
                "web",
                json!([
                    { "name": "http", "port": 8080 },
                    // Same name, other protocol: not the UDP port's.
                    { "name": "dns", "port": 5353, "protocol": "TCP" },
                ]),
                json!([ready("10.244.1.2", "n1")]),
            ),
            slice(
                "web-2",
                "web",
                json!([{ "name": "dns", "port": 5354, "protocol": "UDP" }]),
                json!([ready("10.244.1.3", "n1")]),
            ),
            // Another service's slice.
            slice(
                "other-1",
                "other",
                json!([{ "name": "http", "port": 9999 }]),
                json!([ready("10.244.9.9", "n1")]),
            ),
        ];
        let desired = desired(&[svc], &slices, "n1");
        assert_eq!(
            find(&desired, key(VIP, 80, PROTO_TCP, SCOPE_SOCKET)).backends,
            [tcp([10, 244, 1, 2], 8080)]
        );
        assert_eq!(
            find(&desired, key(VIP, 53, PROTO_UDP, SCOPE_SOCKET)).backends,
            [Backend {
                addr: [10, 244, 1, 3],
                port_be: 5354u16.to_be(),
                protocol: PROTO_UDP,
                flags: 0,
            }]
        );
    }

    #[test]
    fn unnamed_ports_match_unnamed_slice_ports() {
        let svc = service(json!({ "clusterIPs": ["10.96.0.10"], "ports": [{ "port": 80 }] }));
        let slices = [slice(
            "web-1",
            "web",
            json!([{ "port": 8080, "protocol": "TCP" }]),
            json!([ready("10.244.1.2", "n1"), ready("10.244.1.3", "n1")]),
        )];
        let desired = desired(&[svc], &slices, "n1");
        assert_eq!(
            desired.frontends[0].backends,
            [tcp([10, 244, 1, 2], 8080), tcp([10, 244, 1, 3], 8080)]
        );
    }

    #[test]
    fn backends_are_sorted_and_deduplicated_across_slices() {
        let ports = json!([{ "name": "http", "port": 8080 }]);
        let slices = [
            slice(
                "web-b",
                "web",
                ports.clone(),
                json!([ready("10.244.1.9", "n1")]),
            ),
            slice(
                "web-a",
                "web",
                ports,
                json!([ready("10.244.1.3", "n1"), ready("10.244.1.9", "n1")]),
            ),
        ];
        let desired = desired(&[cluster_ip_web()], &slices, "n1");
        assert_eq!(
            desired.frontends[0].backends,
            [tcp([10, 244, 1, 3], 8080), tcp([10, 244, 1, 9], 8080)]
        );
    }

    #[test]
    fn only_the_first_address_of_an_endpoint_is_used() {
        let slices = [http_slice(json!([{
            "addresses": ["10.244.1.2", "10.244.1.3"],
            "conditions": { "ready": true },
        }]))];
        let desired = desired(&[cluster_ip_web()], &slices, "n1");
        assert_eq!(desired.frontends[0].backends, [tcp([10, 244, 1, 2], 8080)]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let terminating = |ip| {
            ep(
                ip,
                "n1",
                json!({ "ready": false, "serving": true, "terminating": true }),
            )
        };
        let gone = ep(
            "10.244.1.4",
            "n1",
            json!({ "ready": false, "serving": false, "terminating": true }),
        );
        // A ready endpoint exists: terminating ones get nothing new.
        let slices = [http_slice(json!([
            terminating("10.244.1.2"),
            ready("10.244.1.3", "n2"),
            gone.clone(),
        ]))];
        let desired_now = desired(&[cluster_ip_web()], &slices, "n1");
        assert_eq!(
            desired_now.frontends[0].backends,
            [tcp([10, 244, 1, 3], 8080)]
        );
        // None ready: the serving, terminating ones (not the non-serving one).
        let slices = [http_slice(json!([terminating("10.244.1.2"), gone]))];
        let desired_now = desired(&[cluster_ip_web()], &slices, "n1");
        assert_eq!(
            desired_now.frontends[0].backends,
            [tcp([10, 244, 1, 2], 8080)]
        );
        // Not ready and not terminating (e.g. starting): never.
        let slices = [http_slice(json!([ep(
            "10.244.1.5",
            "n1",
            json!({ "ready": false, "serving": false })
        )]))];
        assert!(
            desired(&[cluster_ip_web()], &slices, "n1").frontends[0]
                .backends
                .is_empty()
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let mut svc = cluster_ip_web();
        svc.spec.internal_traffic_policy = Some("Local".into());
        let slices = [http_slice(json!([
            ready("10.244.1.2", "n1"),
            ready("10.244.2.2", "n2"),
            ep("10.244.2.3", "", json!({})),
        ]))];
        let desired_n1 = desired(std::slice::from_ref(&svc), &slices, "n1");
        let frontend = &desired_n1.frontends[0];
        assert_eq!(frontend.flags, SERVICE_LOCAL);
        assert_eq!(frontend.backends, [tcp([10, 244, 1, 2], 8080)]);
        // A node without endpoints of its own has none (no fallback to other nodes).
        let desired_n3 = desired(&[svc], &slices, "n3");
        assert!(desired_n3.frontends[0].backends.is_empty());
    }

    #[test]
    fn local_policies_fall_back_to_local_terminating_endpoints() {
        let mut svc = cluster_ip_web();
        svc.spec.internal_traffic_policy = Some("Local".into());
        let slices = [http_slice(json!([
            ep(
                "10.244.1.2",
                "n1",
                json!({ "ready": false, "serving": true, "terminating": true })
            ),
            ready("10.244.2.2", "n2"),
        ]))];
        let desired = desired(&[svc], &slices, "n1");
        assert_eq!(desired.frontends[0].backends, [tcp([10, 244, 1, 2], 8080)]);
    }

    fn node_port_web(type_: &str, external_policy: &str) -> Service {
        service_with_status(
            json!({
                "type": type_,
                "clusterIPs": ["10.96.0.10"],
                "externalTrafficPolicy": external_policy,
                "ports": [{ "name": "http", "port": 80, "nodePort": 30080 }],
            }),
            json!({ "loadBalancer": { "ingress": [{ "ip": "203.0.113.7" }, { "hostname": "lb.example" }] } }),
        )
    }

    fn two_nodes() -> [EndpointSlice; 1] {
        [http_slice(json!([
            ready("10.244.1.2", "n1"),
            ready("10.244.2.2", "n2"),
        ]))]
    }

    #[test]
    fn node_ports_answer_in_both_scopes_with_all_endpoints() {
        let desired = desired(&[node_port_web("NodePort", "Cluster")], &two_nodes(), "n1");
        let all = [tcp([10, 244, 1, 2], 8080), tcp([10, 244, 2, 2], 8080)];
        assert_eq!(
            keys(&desired),
            [
                key([0; 4], 30080, PROTO_TCP, SCOPE_SOCKET),
                key([0; 4], 30080, PROTO_TCP, SCOPE_EXTERNAL),
                key(VIP, 80, PROTO_TCP, SCOPE_SOCKET),
            ]
        );
        for frontend in &desired.frontends {
            assert_eq!(frontend.backends, all);
            assert_eq!(frontend.flags, 0);
        }
        assert_eq!(desired.frontends[0].kind, FrontendKind::NodePort);
        // A ClusterIP service's nodePort field means nothing.
        let mut cluster_ip = node_port_web("ClusterIP", "");
        cluster_ip.status = None;
        let desired = desired_of(cluster_ip);
        assert_eq!(keys(&desired), [key(VIP, 80, PROTO_TCP, SCOPE_SOCKET)]);
    }

    fn desired_of(svc: Service) -> Desired {
        desired(&[svc], &two_nodes(), "n1")
    }

    #[test]
    fn external_traffic_policy_local_restricts_only_external_scope() {
        let desired = desired(&[node_port_web("NodePort", "Local")], &two_nodes(), "n1");
        let all = [tcp([10, 244, 1, 2], 8080), tcp([10, 244, 2, 2], 8080)];
        let external = find(&desired, key([0; 4], 30080, PROTO_TCP, SCOPE_EXTERNAL));
        assert_eq!(external.flags, SERVICE_LOCAL);
        assert_eq!(external.backends, [tcp([10, 244, 1, 2], 8080)]);
        let socket = find(&desired, key([0; 4], 30080, PROTO_TCP, SCOPE_SOCKET));
        assert_eq!(socket.flags, 0);
        assert_eq!(socket.backends, all);
        assert_eq!(
            find(&desired, key(VIP, 80, PROTO_TCP, SCOPE_SOCKET)).backends,
            all
        );
    }

    #[test]
    fn load_balancer_ingress_ips_answer_in_both_scopes() {
        let desired = desired(
            &[node_port_web("LoadBalancer", "Local")],
            &two_nodes(),
            "n2",
        );
        let lb = [203, 0, 113, 7];
        assert_eq!(
            keys(&desired),
            [
                key([0; 4], 30080, PROTO_TCP, SCOPE_SOCKET),
                key([0; 4], 30080, PROTO_TCP, SCOPE_EXTERNAL),
                key(VIP, 80, PROTO_TCP, SCOPE_SOCKET),
                key(lb, 80, PROTO_TCP, SCOPE_SOCKET),
                key(lb, 80, PROTO_TCP, SCOPE_EXTERNAL),
            ]
        );
        let external = find(&desired, key(lb, 80, PROTO_TCP, SCOPE_EXTERNAL));
        assert_eq!(external.kind, FrontendKind::LoadBalancer);
        assert_eq!(external.flags, SERVICE_LOCAL);
        assert_eq!(external.backends, [tcp([10, 244, 2, 2], 8080)]);
        let socket = find(&desired, key(lb, 80, PROTO_TCP, SCOPE_SOCKET));
        assert_eq!(socket.backends.len(), 2);
    }

    #[test]
    fn proxy_mode_load_balancer_ips_are_left_to_the_load_balancer() {
        let mut svc = node_port_web("LoadBalancer", "Cluster");
        svc.status = apiary_api::meta::from_json(json!({ "loadBalancer": { "ingress": [
            { "ip": "203.0.113.7", "ipMode": "Proxy" },
            { "ip": "203.0.113.8", "ipMode": "VIP" },
        ] } }))
        .unwrap();
        let desired = desired_of(svc);
        let lb: BTreeSet<[u8; 4]> = desired
            .frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::LoadBalancer)
            .map(|f| f.key.addr)
            .collect();
        assert_eq!(lb, [[203, 0, 113, 8]].into());
    }

    #[test]
    fn external_ips_answer_for_any_type_with_a_cluster_ip() {
        let mut svc = cluster_ip_web();
        svc.spec.external_ips = vec!["198.51.100.1".into(), "2001:db8::1".into()];
        let desired = desired(&[svc], &two_nodes(), "n1");
        let ext = [198, 51, 100, 1];
        assert_eq!(
            keys(&desired),
            [
                key(VIP, 80, PROTO_TCP, SCOPE_SOCKET),
                key(ext, 80, PROTO_TCP, SCOPE_SOCKET),
                key(ext, 80, PROTO_TCP, SCOPE_EXTERNAL),
            ]
        );
        assert_eq!(
            find(&desired, key(ext, 80, PROTO_TCP, SCOPE_EXTERNAL)).kind,
            FrontendKind::ExternalIp
        );
    }

    #[test]
    fn client_ip_affinity_sets_the_flag_and_timeout() {
        let mut svc = node_port_web("NodePort", "Local");
        svc.spec.session_affinity = "ClientIP".into();
        let desired_default = desired(std::slice::from_ref(&svc), &two_nodes(), "n1");
        for frontend in &desired_default.frontends {
            assert_ne!(frontend.flags & SERVICE_AFFINITY, 0);
            assert_eq!(
                frontend.affinity_timeout_secs,
                DEFAULT_AFFINITY_TIMEOUT_SECS
            );
        }
        let external = find(
            &desired_default,
            key([0; 4], 30080, PROTO_TCP, SCOPE_EXTERNAL),
        );
        assert_eq!(external.flags, SERVICE_AFFINITY | SERVICE_LOCAL);
        svc.spec.session_affinity_config = Some(
            apiary_api::meta::from_json(json!({ "clientIP": { "timeoutSeconds": 60 } })).unwrap(),
        );
        let desired_60 = desired(&[svc], &two_nodes(), "n1");
        assert!(
            desired_60
                .frontends
                .iter()
                .all(|f| f.affinity_timeout_secs == 60)
        );
    }

    #[test]
    fn a_frontend_claimed_twice_goes_to_the_first_service_by_name() {
        let mut a = cluster_ip_web();
        a.metadata.name = "b-second".into();
        a.spec.external_ips = vec!["198.51.100.1".into()];
        let mut b = a.clone();
        b.metadata.name = "a-first".into();
        b.spec.cluster_ips = vec!["10.96.0.11".into()];
        for services in [[a.clone(), b.clone()], [b, a]] {
            let desired = desired(&services, &[], "n1");
            let shared = find(
                &desired,
                key([198, 51, 100, 1], 80, PROTO_TCP, SCOPE_EXTERNAL),
            );
            assert_eq!(shared.service.name, "a-first");
            assert_eq!(desired.frontends.len(), 4);
        }
    }

    #[test]
    fn non_ipv4_slices_and_unparsable_addresses_are_skipped() {
        let mut v6 = http_slice(json!([ready("fd00::1", "n1")]));
        v6.address_type = "IPv6".into();
        let bad = http_slice(json!([ready("not-an-ip", "n1"), ready("10.244.1.2", "n1")]));
        let desired = desired(&[cluster_ip_web()], &[v6, bad], "n1");
        assert_eq!(desired.frontends[0].backends, [tcp([10, 244, 1, 2], 8080)]);
    }
}
