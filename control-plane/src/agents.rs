//! The node agents' channel (`apiary.agent.v1.NodeAgent`, gRPC on the API port): registration and
//! pod CIDRs, heartbeats through Leases, the pods bound to each node, pod status reports, and the
//! objects the data plane programs itself from.

use std::{pin::Pin, sync::Arc};

use apiary_agent_api::v1::{
    HeartbeatRequest, HeartbeatResponse, ObjectEvent, PodStatusAck, PodStatusReport,
    RegisterRequest, RegisterResponse, WatchDataplaneRequest, WatchPodsRequest, node_agent_server,
    object_event::Type,
};
use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::{
    apiserver::{
        Api,
        auth::UserInfo,
        authz::{node::node_identity, node_restriction, rbac::PRIVILEGED_GROUP},
        error::ApiError,
        objects::{self, Change, Filter},
        path::Target,
        resources::ResourceType,
    },
    scheduler::lifecycle::{self, ReadyCondition},
    store,
};

/// The pod network every node's pod CIDR is cut from (Kubernetes' usual 10.244.0.0/16).
pub const CLUSTER_CIDR: (u8, u8) = (10, 244);
/// How long a node may stay silent before it is counted as lost.
pub const LEASE_DURATION_SECONDS: i64 = 40;
const POD_CIDR_KEYS: &str = "/registry/ranges/podcidrs/";
/// The kinds `WatchDataplane` streams when none are named.
const DATAPLANE_KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "namespaces"),
    // Nodes carry the pod CIDRs and addresses that native routing between nodes needs.
    ("", "v1", "nodes"),
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("discovery.k8s.io", "v1", "endpointslices"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    // Pod addresses map to these numbers in the policy maps.
    ("apiary.dev", "v1", "securityidentities"),
    // The node's provisioner for its CSI drivers (distributed provisioning, as every node's
    // external-provisioner watches them) wakes on changes to these instead of polling.
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "persistentvolumes"),
    ("storage.k8s.io", "v1", "storageclasses"),
];

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct AgentService {
    api: Arc<Api>,
    /// Where the next pod CIDR search starts.
    next_cidr: Arc<std::sync::atomic::AtomicU32>,
}

impl AgentService {
    pub fn new(api: Arc<Api>) -> Self {
        Self {
            api,
            next_cidr: Arc::default(),
        }
    }

    /// The tonic server for this service, to mount on the API router.
    pub fn into_server(self) -> node_agent_server::NodeAgentServer<Self> {
        node_agent_server::NodeAgentServer::new(self)
    }

    fn resource(&self, group: &str, plural: &str) -> &'static ResourceType {
        self.api
            .resources
            .get(group, "v1", plural)
            .expect("the agent protocol's types are served")
    }
}

fn to_status(e: ApiError) -> Status {
    let code = match e.code.as_u16() {
        400 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        409 => tonic::Code::Aborted,
        410 => tonic::Code::OutOfRange,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

/// The Ready condition a node registers with: the one its agent put in `node` (an agent that
/// judges its own readiness registers NotReady and says Ready once it is), else Ready.
fn registered_ready(node: &Value) -> Value {
    let given = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    let (status, reason, message) = match given {
        Some(c) => (
            c["status"]
                .as_str()
                .filter(|s| matches!(*s, "True" | "False"))
                .unwrap_or("Unknown"),
            c["reason"].as_str().unwrap_or_default(),
            c["message"].as_str().unwrap_or_default(),
        ),
        None => (
            "True",
            "KubeletReady",
            "apiary node agent is posting ready status",
        ),
    };
    json!({
        "type": "Ready", "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now(), "lastTransitionTime": now(),
    })
}

/// `conditions` (a stored node's) with its Ready condition replaced by `ready`, whose
/// transition time is the stored one while the status is the same: a node registering again
/// (its agent restarted) has not changed state.
fn with_ready(conditions: &Value, mut ready: Value) -> Value {
    let mut conditions: Vec<Value> = conditions.as_array().cloned().unwrap_or_default();
    match conditions.iter_mut().find(|c| c["type"] == "Ready") {
        Some(stored) => {
            if stored["status"] == ready["status"] {
                ready["lastTransitionTime"] = stored["lastTransitionTime"].clone();
            }
            *stored = ready;
        }
        None => conditions.push(ready),
    }
    Value::Array(conditions)
}

/// Who calls the channel: the cluster admin (`system:masters`: hollow nodes, tools) acts for any
/// node; a node identity (`system:node:<name>`) only for itself, as NodeRestriction keeps it on
/// the API; anyone else (a bootstrap token, a ServiceAccount, a user) is refused.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    Admin,
    Node(String),
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        let user = request
            .extensions()
            .get::<UserInfo>()
            .ok_or_else(|| Status::unauthenticated("Unauthorized"))?;
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(Self::Admin);
        }
        match node_identity(user) {
            Some(node) if !node.is_empty() => Ok(Self::Node(node.to_owned())),
            _ => Err(Status::permission_denied(format!(
                "User {:?} cannot use the node agent channel: only nodes (system:node:<name> in system:nodes) may",
                user.name
            ))),
        }
    }

    /// Whether the caller may act for `node`.
    fn may_act_for(&self, node: &str) -> Result<(), Status> {
        match self {
            Self::Admin => Ok(()),
            Self::Node(own) if own == node => Ok(()),
            Self::Node(own) => Err(Status::permission_denied(format!(
                "node {own:?} is not allowed to act for node {node:?}"
            ))),
        }
    }
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn event(kind: &str, change: Change) -> Result<ObjectEvent, Status> {
    let (kind_type, object) = match change {
        Change::Added(o) => (Type::Added, o),
        Change::Modified(o) => (Type::Modified, o),
        Change::Deleted(o) => (Type::Deleted, o),
        Change::Error(e) => return Err(to_status(e)),
    };
    let resource_version = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_default();
    Ok(ObjectEvent {
        r#type: kind_type as i32,
        kind: kind.to_owned(),
        object_json: serde_json::to_vec(&*object).expect("a JSON value always serializes"),
        resource_version,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ObjectEvent, Status>> + Send>>;

/// Every object `filter` selects (ADDED), then SYNCED, then each change.
async fn list_then_watch(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    filter: Filter,
) -> Result<EventStream, Status> {
    let target = Target {
        resource,
        namespace: None,
        name: None,
        subresource: None,
    };
    let watch = objects::watch_changes(api, &target, filter, objects::Start::Any)
        .await
        .map_err(to_status)?;
    let kind = resource.kind;
    let synced = ObjectEvent {
        r#type: Type::Synced as i32,
        kind: kind.to_owned(),
        object_json: Vec::new(),
        resource_version: watch.revision,
    };
    // Encoded now, and the decoded objects dropped: a stream is drained as fast as its agent
    // reads, and 5,000 agents relisting at once held every pod of the cluster decoded (several
    // times its ~3 KiB of JSON) until theirs were sent: with 150,000 pods the control plane
    // went from 10 to 18.7 GiB while they reconnected.
    let initial: Vec<_> = watch
        .initial
        .into_iter()
        .map(|o| event(kind, Change::Added(o)))
        .collect();
    Ok(futures::stream::iter(initial)
        .chain(futures::stream::once(std::future::ready(Ok(synced))))
        .chain(watch.changes.map(move |change| event(kind, change)))
        .boxed())
}

/// The pod network node CIDRs are cut from: `/24`s of `base/prefix_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub base: std::net::Ipv4Addr,
    pub prefix_len: u8,
}

impl Default for PodNetwork {
    /// Kubernetes' usual 10.244.0.0/16: 256 nodes.
    fn default() -> Self {
        let (a, b) = CLUSTER_CIDR;
        Self {
            base: std::net::Ipv4Addr::new(a, b, 0, 0),
            prefix_len: 16,
        }
    }
}

impl std::str::FromStr for PodNetwork {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let base: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(8..=24).contains(&prefix_len) {
            return Err(format!(
                "the prefix length must be 8 to 24 (nodes get /24s), not {prefix_len}"
            ));
        }
        let mask = u32::MAX << (32 - prefix_len);
        if u32::from(base) & !mask != 0 {
            return Err(format!("{s} has host bits set"));
        }
        Ok(Self { base, prefix_len })
    }
}

impl PodNetwork {
    fn subnets(self) -> u32 {
        1 << (24 - self.prefix_len)
    }

    fn subnet(self, index: u32) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.base) + (index << 8))
    }
}

/// Claims a free /24 of the pod network for `node`. Each probe takes the next index from
/// `next` (shared by every registration), so that concurrent registrations try different
/// subnets: thousands of nodes registering at once each probe about one key, where probing
/// from a shared hint had each try every subnet the others were taking (quadratic writes).
async fn allocate_pod_cidr(
    api: &Api,
    network: PodNetwork,
    next: &std::sync::atomic::AtomicU32,
    node: &str,
) -> Result<String, Status> {
    use std::sync::atomic::Ordering;
    let total = network.subnets();
    for _ in 0..total {
        let index = next.fetch_add(1, Ordering::Relaxed) % total;
        let subnet = network.subnet(index);
        let key = format!("{POD_CIDR_KEYS}{subnet}-24");
        match api.store.create(&key, node.as_bytes().to_vec()).await {
            Ok(_) => return Ok(format!("{subnet}/24")),
            Err(store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(to_status(ApiError::storage(&e))),
        }
    }
    Err(Status::resource_exhausted(format!(
        "every /24 of {}/{} is taken",
        network.base, network.prefix_len
    )))
}

#[tonic::async_trait]
impl node_agent_server::NodeAgent for AgentService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut node = parse_json(&request.into_inner().node_json, "node_json")?;
        let name = node["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Status::invalid_argument("node_json: metadata.name: Required value"))?
            .to_owned();
        caller.may_act_for(&name)?;
        // NodeRestriction on this path too: no workload-steering labels of its own choosing.
        if let Caller::Node(own) = &caller {
            let existing = objects::get(&self.api, self.resource("", "nodes"), None, &name)
                .await
                .ok();
            let mut merged = existing.clone().unwrap_or_else(|| node.clone());
            if let Some(labels) = node["metadata"]["labels"].as_object() {
                for (k, v) in labels {
                    merged["metadata"]["labels"][k] = v.clone();
                }
            }
            node_restriction::admit_node(own, &merged, existing.as_ref()).map_err(to_status)?;
        }
        let nodes = self.resource("", "nodes");
        let ready = registered_ready(&node);
        let stored = match objects::get(&self.api, nodes, None, &name).await {
            Ok(existing) => {
                // Keep what the cluster decided (pod CIDR, taints, cordon); take what the node
                // observed (labels, capacity, addresses).
                let mut updated = existing.clone();
                if let Some(labels) = node["metadata"]["labels"].as_object() {
                    for (k, v) in labels {
                        updated["metadata"]["labels"][k] = v.clone();
                    }
                }
                let conditions = with_ready(&existing["status"]["conditions"], ready);
                updated["status"] = node["status"].take();
                updated["status"]["conditions"] = conditions;
                let target = Target {
                    resource: nodes,
                    namespace: None,
                    name: Some(name.clone()),
                    subresource: None,
                };
                let with_status = objects::update(&self.api, &target, &name, updated.clone())
                    .await
                    .map_err(to_status)?;
                let status_target = Target {
                    subresource: Some("status".into()),
                    ..target
                };
                let mut status_update = with_status;
                status_update["status"] = updated["status"].take();
                objects::update(&self.api, &status_target, &name, status_update)
                    .await
                    .map_err(to_status)?
            }
            Err(e) if e.reason == "NotFound" => {
                let cidr =
                    allocate_pod_cidr(&self.api, self.api.pod_network, &self.next_cidr, &name)
                        .await?;
                node["apiVersion"] = json!("v1");
                node["kind"] = json!("Node");
                node["spec"]["podCIDR"] = json!(cidr);
                node["spec"]["podCIDRs"] = json!([cidr]);
                let status = node["status"].take();
                let target = Target {
                    resource: nodes,
                    namespace: None,
                    name: None,
                    subresource: None,
                };
                let created = objects::create(&self.api, &target, node)
                    .await
                    .map_err(to_status)?;
                let mut with_status = created;
                with_status["status"] = status;
                with_status["status"]["conditions"] = json!([ready]);
                let status_target = Target {
                    resource: nodes,
                    namespace: None,
                    name: Some(name.clone()),
                    subresource: Some("status".into()),
                };
                objects::update(&self.api, &status_target, &name, with_status)
                    .await
                    .map_err(to_status)?
            }
            Err(e) => return Err(to_status(e)),
        };
        let pod_cidr = stored["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Response::new(RegisterResponse {
            node_json: serde_json::to_vec(&stored).expect("a JSON value always serializes"),
            pod_cidr,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = Caller::of(&request)?;
        let HeartbeatRequest {
            node_name: node,
            ready,
        } = request.into_inner();
        caller.may_act_for(&node)?;
        // The condition first: the lifecycle controller, seeing the renewal, must find what the
        // agent said rather than the Unknown it wrote while the node was silent.
        if let Some(ready) = ready {
            let condition = ReadyCondition {
                status: if ready.ready { "True" } else { "False" },
                reason: &ready.reason,
                message: &ready.message,
            };
            lifecycle::set_ready(&self.api, &node, condition, None)
                .await
                .map_err(to_status)?;
        }
        let leases = self.resource("coordination.k8s.io", "leases");
        let renew = crate::lease::micro_time(chrono::Utc::now());
        let target = Target {
            resource: leases,
            namespace: Some("kube-node-lease".into()),
            name: Some(node.clone()),
            subresource: None,
        };
        match objects::get(&self.api, leases, Some("kube-node-lease"), &node).await {
            Ok(mut lease) => {
                lease["spec"]["renewTime"] = json!(renew);
                objects::update(&self.api, &target, &node, lease)
                    .await
                    .map_err(to_status)?;
            }
            Err(e) if e.reason == "NotFound" => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": { "name": node, "namespace": "kube-node-lease" },
                    "spec": {
                        "holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                        "acquireTime": renew, "renewTime": renew,
                    },
                });
                let target = Target {
                    name: None,
                    ..target
                };
                objects::create(&self.api, &target, lease)
                    .await
                    .map_err(to_status)?;
            }
            Err(e) => return Err(to_status(e)),
        }
        Ok(Response::new(HeartbeatResponse {
            lease_duration_seconds: LEASE_DURATION_SECONDS,
        }))
    }

    type WatchPodsStream = EventStream;

    async fn watch_pods(
        &self,
        request: Request<WatchPodsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        let node = request.into_inner().node_name;
        if node.is_empty() || node.contains(',') {
            return Err(Status::invalid_argument("node_name: Required value"));
        }
        caller.may_act_for(&node)?;
        let filter = Filter::new("", &format!("spec.nodeName={node}")).map_err(to_status)?;
        let stream = list_then_watch(&self.api, self.resource("", "pods"), filter).await?;
        Ok(Response::new(stream))
    }

    async fn report_pod_status(
        &self,
        request: Request<PodStatusReport>,
    ) -> Result<Response<PodStatusAck>, Status> {
        let caller = Caller::of(&request)?;
        let report = request.into_inner();
        let status = parse_json(&report.status_json, "status_json")?;
        let pods = self.resource("", "pods");
        let mut pod = objects::get(&self.api, pods, Some(&report.namespace), &report.name)
            .await
            .map_err(to_status)?;
        caller.may_act_for(pod["spec"]["nodeName"].as_str().unwrap_or_default())?;
        if pod["metadata"]["uid"].as_str() != Some(report.uid.as_str()) {
            return Err(Status::failed_precondition(format!(
                "pod {}/{} is not the pod with UID {}",
                report.namespace, report.name, report.uid
            )));
        }
        pod["status"] = status;
        let target = Target {
            resource: pods,
            namespace: Some(report.namespace.clone()),
            name: Some(report.name.clone()),
            subresource: Some("status".into()),
        };
        let updated = objects::update(&self.api, &target, &report.name, pod)
            .await
            .map_err(to_status)?;
        let resource_version = updated["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or_default();
        Ok(Response::new(PodStatusAck { resource_version }))
    }

    type WatchDataplaneStream = EventStream;

    async fn watch_dataplane(
        &self,
        request: Request<WatchDataplaneRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Every node reads these (the kube-proxy and CNI part of the agent).
        Caller::of(&request)?;
        let wanted = request.into_inner().kinds;
        let mut streams = Vec::new();
        for (group, version, plural) in DATAPLANE_KINDS {
            let resource = self
                .api
                .resources
                .get(group, version, plural)
                .expect("served");
            if wanted.is_empty() || wanted.iter().any(|k| k == resource.kind) {
                streams.push(list_then_watch(&self.api, resource, Filter::default()).await?);
            }
        }
        if streams.is_empty() {
            return Err(Status::invalid_argument(format!(
                "kinds: none of {wanted:?} is streamed (Namespace, Node, Pod, Service, EndpointSlice, NetworkPolicy, SecurityIdentity, PersistentVolumeClaim, PersistentVolume, StorageClass)"
            )));
        }
        Ok(Response::new(futures::stream::select_all(streams).boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_networks_parse_and_split_into_slash_24s() {
        let net: PodNetwork = "10.128.0.0/9".parse().unwrap();
        assert_eq!(net.subnets(), 32768);
        assert_eq!(net.subnet(0), std::net::Ipv4Addr::new(10, 128, 0, 0));
        assert_eq!(net.subnet(300), std::net::Ipv4Addr::new(10, 129, 44, 0));
        assert_eq!(PodNetwork::default().subnets(), 256);
        assert!("10.244.0.1/16".parse::<PodNetwork>().is_err(), "host bits");
        assert!(
            "10.0.0.0/25".parse::<PodNetwork>().is_err(),
            "smaller than a node's /24"
        );
        assert!("nonsense".parse::<PodNetwork>().is_err());
    }

    #[test]
    fn registering_again_keeps_the_ready_transition_time_and_other_conditions() {
        let stored = json!([
            {"type": "NetworkUnavailable", "status": "False"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
        ]);
        let ready =
            |status: &str| json!({"type": "Ready", "status": status, "lastTransitionTime": "now"});
        let same = with_ready(&stored, ready("True"));
        assert_eq!(same[0]["type"], "NetworkUnavailable");
        assert_eq!(same[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let changed = with_ready(&stored, ready("False"));
        assert_eq!(changed[1]["status"], "False");
        assert_eq!(changed[1]["lastTransitionTime"], "now");
        assert_eq!(
            with_ready(&Value::Null, ready("True")),
            json!([ready("True")])
        );
    }

    #[tokio::test]
    async fn concurrent_registrations_each_probe_their_own_subnet() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let (_dir, api) = crate::testing::api().await;
        let network: PodNetwork = "10.200.0.0/22".parse().unwrap();
        let next = AtomicU32::new(0);
        // One subnet taken already (a node registered before a restart): probed once, skipped.
        allocate_pod_cidr(&api, network, &next, "old")
            .await
            .unwrap();
        next.store(0, Ordering::Relaxed);
        let claims = futures::future::join_all(
            (1..4).map(|i| allocate_pod_cidr(&api, network, &next, ["a", "b", "c"][i - 1])),
        )
        .await;
        let mut cidrs: Vec<String> = claims.into_iter().map(Result::unwrap).collect();
        cidrs.sort();
        assert_eq!(cidrs, ["10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24"]);
        // Four probes in all for three claims: none tried a subnet another was taking.
        assert_eq!(next.load(Ordering::Relaxed), 4);
        let full = allocate_pod_cidr(&api, network, &next, "d")
            .await
            .unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    }
}
