//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the pods of
//! its namespace that match it and have an IP become its endpoints, with each service port
//! resolved against the pod (a named `targetPort` through the pod's container ports). Services
//! without a selector are left alone, so hand-written Endpoints stay as written (and are mirrored
//! into slices by [`super::endpoints_mirror`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    controlled_by, labels_of, list_fresh, owner_reference, resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
    str_of, target,
};
use crate::apiserver::{Api, objects, resources::ResourceType};

const COMPONENT: &str = "endpoint-controller";
/// The label naming the Service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const CONCURRENCY: usize = 4;
const RESYNC: Duration = Duration::from_secs(30);

/// Runs the Endpoints/EndpointSlice controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let services = resource(&api, "", "v1", "services");
    let pods = resource(&api, "", "v1", "pods");
    let cache = Cache::new(services);
    let pod_cache = Cache::new(pods);
    let queue = Queue::new();
    let reconciler = Arc::new(Endpoints {
        api: Arc::clone(&api),
        cache: cache.clone(),
        pod_cache: pod_cache.clone(),
        endpoints: resource(&api, "", "v1", "endpoints"),
        slices: resource(&api, "discovery.k8s.io", "v1", "endpointslices"),
    });
    let own = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |svc: &Value| queue.add(cache.key_of(svc))
    };
    // A pod's labels may have changed so that it no longer matches: every selecting Service of
    // its namespace looks again (the reconcile is cheap and writes only differences).
    let pod_changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |pod: &Value| {
            for svc in cache.list(str_of(pod, "/metadata/namespace")) {
                if selector_of_service(&svc).is_some() {
                    queue.add(cache.key_of(&svc));
                }
            }
        }
    };
    // A Service reconciled before the pods are listed would get empty slices.
    let read = vec![cache.clone(), pod_cache.clone()];
    tokio::join!(
        runtime::reflect(Arc::clone(&api), cache.clone(), own, shutdown.clone()),
        runtime::reflect(Arc::clone(&api), pod_cache, pod_changed, shutdown.clone()),
        runtime::resync(cache, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process_once_synced(read, reconciler, queue, CONCURRENCY, shutdown),
    );
}

struct Endpoints {
    api: Arc<Api>,
    cache: Cache,
    pod_cache: Cache,
    endpoints: &'static ResourceType,
    slices: &'static ResourceType,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

/// The Service's selector, when it has a non-empty one.
pub(super) fn selector_of_service(svc: &Value) -> Option<BTreeMap<String, String>> {
    let selector: BTreeMap<String, String> = svc["spec"]["selector"]
        .as_object()?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    (!selector.is_empty()).then_some(selector)
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// One resolved port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    name: String,
    port: i64,
    protocol: String,
    app_protocol: Option<String>,
}

impl Port {
    fn to_json(&self) -> Value {
        let mut port = json!({ "name": self.name, "port": self.port, "protocol": self.protocol });
        if let Some(p) = &self.app_protocol {
            port["appProtocol"] = json!(p);
        }
        port
    }
}

/// The service ports that resolve on `pod`, in service order. A named `targetPort` is looked
/// up among the pod's container ports (with the same protocol); a pod lacking it is left out
/// for that port.
fn resolve_ports(svc: &Value, pod: &Value) -> Vec<Port> {
    let mut resolved = Vec::new();
    for sp in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let protocol = sp["protocol"].as_str().unwrap_or("TCP").to_owned();
        let port = match &sp["targetPort"] {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => match s.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .find(|p| {
                        p["name"].as_str() == Some(s.as_str())
                            && p["protocol"].as_str().unwrap_or("TCP") == protocol
                    })
                    .and_then(|p| p["containerPort"].as_i64()),
            },
            _ => sp["port"].as_i64(),
        };
        if let Some(port) = port.filter(|p| *p > 0) {
            resolved.push(Port {
                name: sp["name"].as_str().unwrap_or_default().to_owned(),
                port,
                protocol,
                app_protocol: sp["appProtocol"].as_str().map(str::to_owned),
            });
        }
    }
    resolved
}

/// A pod that is an endpoint of the Service, with what the objects say about it.
#[derive(Debug)]
struct Member {
    ip: String,
    ports: Vec<Port>,
    ready: bool,
    terminating: bool,
    node: String,
    target_ref: Value,
}

/// The pods that are endpoints of `svc`: matching its selector, with an IP, not finished,
/// and (when the Service has ports) with at least one port that resolves.
fn members(svc: &Value, selector: &BTreeMap<String, String>, pods: &[Arc<Value>]) -> Vec<Member> {
    let has_ports = svc["spec"]["ports"]
        .as_array()
        .is_some_and(|p| !p.is_empty());
    let mut members: Vec<Member> = pods
        .iter()
        .filter(|pod| {
            let labels = labels_of(pod);
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|pod| !matches!(str_of(pod, "/status/phase"), "Succeeded" | "Failed"))
        .filter_map(|pod| {
            let ip = str_of(pod, "/status/podIP");
            if ip.is_empty() {
                return None;
            }
            let ports = resolve_ports(svc, pod);
            if has_ports && ports.is_empty() {
                return None;
            }
            Some(Member {
                ip: ip.to_owned(),
                ports,
                ready: is_ready(pod),
                terminating: pod["metadata"]["deletionTimestamp"].is_string(),
                node: str_of(pod, "/spec/nodeName").to_owned(),
                target_ref: json!({
                    "kind": "Pod",
                    "namespace": pod["metadata"]["namespace"],
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                }),
            })
        })
        .collect();
    members.sort_by(|a, b| {
        a.ip.cmp(&b.ip).then_with(|| {
            a.target_ref["name"]
                .as_str()
                .cmp(&b.target_ref["name"].as_str())
        })
    });
    members
}

fn endpoint_address(m: &Member) -> Value {
    let mut address = json!({ "ip": m.ip, "targetRef": m.target_ref });
    if !m.node.is_empty() {
        address["nodeName"] = json!(m.node);
    }
    address
}

/// The `subsets` of the Endpoints: members grouped by their resolved ports. Terminating pods
/// are left out (as Kubernetes does without `publishNotReadyAddresses`).
fn desired_subsets(members: &[Member]) -> Value {
    let mut groups: BTreeMap<Vec<Port>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.terminating) {
        let (ready, not_ready) = groups.entry(m.ports.clone()).or_default();
        if m.ready {
            ready.push(endpoint_address(m));
        } else {
            not_ready.push(endpoint_address(m));
        }
    }
    Value::Array(
        groups
            .into_iter()
            .map(|(ports, (ready, not_ready))| {
                let mut subset = json!({});
                if !ready.is_empty() {
                    subset["addresses"] = Value::Array(ready);
                }
                if !not_ready.is_empty() {
                    subset["notReadyAddresses"] = Value::Array(not_ready);
                }
                if !ports.is_empty() {
                    subset["ports"] = ports.iter().map(Port::to_json).collect();
                }
                subset
            })
            .collect(),
    )
}

/// FNV-1a: a stable, short suffix for slice names.
pub(super) fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The EndpointSlices: one per distinct port set, named after the Service and the port set.
fn desired_slices(svc: &Value, members: &[Member]) -> BTreeMap<String, Value> {
    let name = str_of(svc, "/metadata/name");
    let mut groups: BTreeMap<Vec<Port>, Vec<Value>> = BTreeMap::new();
    for m in members {
        let mut endpoint = json!({
            "addresses": [m.ip],
            "conditions": {
                "ready": m.ready && !m.terminating,
                "serving": m.ready,
                "terminating": m.terminating,
            },
            "targetRef": m.target_ref,
        });
        if !m.node.is_empty() {
            endpoint["nodeName"] = json!(m.node);
        }
        groups.entry(m.ports.clone()).or_default().push(endpoint);
    }
    // A Service with no endpoints still has one (empty) slice, as in Kubernetes.
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    let prefix: String = name.chars().take(50).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    groups
        .into_iter()
        .map(|(ports, endpoints)| {
            let key = format!("{ports:?}");
            let slice_name = format!("{prefix}-{:08x}", fnv(&key));
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": svc["metadata"]["namespace"],
                    "labels": { SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY },
                    "ownerReferences": [owner_reference(svc, "v1", "Service")],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports.iter().map(Port::to_json).collect::<Vec<_>>(),
            });
            (slice_name, slice)
        })
        .collect()
}

/// `value`, with `null` read as an empty array.
pub(super) fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

impl Endpoints {
    async fn sync_endpoints(&self, svc: &Value, subsets: Value) -> Result<()> {
        let namespace = str_of(svc, "/metadata/namespace");
        let name = str_of(svc, "/metadata/name");
        let target = target(self.endpoints, namespace, Some(name));
        let labels = svc["metadata"]["labels"].clone();
        match objects::get(&self.api, self.endpoints, Some(namespace), name).await {
            Ok(current) => {
                let same_labels = labels_of(&current) == labels_of(svc);
                if array(&current["subsets"]) == array(&subsets) && same_labels {
                    return Ok(());
                }
                let mut updated = current.clone();
                updated["subsets"] = subsets;
                if !labels.is_null() {
                    updated["metadata"]["labels"] = labels;
                }
                // Pinned to the version read: a concurrent change makes us look again.
                objects::update(&self.api, &target, name, updated)
                    .await
                    .map_err(|e| Error::api(format!("updating endpoints {name}"), &e))?;
            }
            Err(e) if e.reason == "NotFound" => {
                let mut endpoints = json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": { "name": name, "namespace": namespace },
                    "subsets": subsets,
                });
                if !labels.is_null() {
                    endpoints["metadata"]["labels"] = labels;
                }
                // AlreadyExists (a concurrent writer) is retried, and then updates.
                objects::create(&self.api, &target, endpoints)
                    .await
                    .map_err(|e| Error::api(format!("creating endpoints {name}"), &e))?;
            }
            Err(e) => return Err(Error::api(format!("reading endpoints {name}"), &e)),
        }
        Ok(())
    }

    async fn sync_slices(&self, svc: &Value, desired: BTreeMap<String, Value>) -> Result<()> {
        let namespace = str_of(svc, "/metadata/namespace");
        let existing: Vec<Value> = list_fresh(&self.api, self.slices, namespace)
            .await?
            .into_iter()
            .filter(|s| controlled_by(s, svc))
            .collect();
        write_slices(&self.api, self.slices, namespace, &existing, desired, &[]).await
    }
}

/// Makes a controller's EndpointSlices of one Service (`existing`, read fresh) exactly
/// `desired`: removes the extra ones (preconditioned on their uid), creates the missing ones and
/// rewrites those whose endpoints, ports, address type, labels or `metadata` fields
/// `also_metadata` differ. Shared by the EndpointSlice and the mirroring controllers.
pub(super) async fn write_slices(
    api: &Arc<Api>,
    slices: &'static ResourceType,
    namespace: &str,
    existing: &[Value],
    desired: BTreeMap<String, Value>,
    also_metadata: &[&str],
) -> Result<()> {
    for slice in existing {
        let slice_name = str_of(slice, "/metadata/name");
        if desired.contains_key(slice_name) {
            continue;
        }
        let options = json!({ "preconditions": { "uid": slice["metadata"]["uid"] } });
        let target = target(slices, namespace, Some(slice_name));
        match objects::delete(api, &target, slice_name, &options).await {
            Ok(_) => {}
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => {
                return Err(Error::api(
                    format!("deleting endpointslice {slice_name}"),
                    &e,
                ));
            }
        }
    }
    for (slice_name, want) in desired {
        let target = target(slices, namespace, Some(&slice_name));
        let current = existing
            .iter()
            .find(|s| str_of(s, "/metadata/name") == slice_name);
        let Some(current) = current else {
            // A slice of that name managed by someone else makes this fail (AlreadyExists)
            // and retry with back-off, rather than take it over.
            objects::create(api, &target, want)
                .await
                .map_err(|e| Error::api(format!("creating endpointslice {slice_name}"), &e))?;
            continue;
        };
        let same = array(&current["endpoints"]) == array(&want["endpoints"])
            && array(&current["ports"]) == array(&want["ports"])
            && current["addressType"] == want["addressType"]
            && labels_of(current) == labels_of(&want)
            && also_metadata
                .iter()
                .all(|field| current["metadata"][*field] == want["metadata"][*field]);
        if same {
            continue;
        }
        let mut updated = current.clone();
        for field in ["endpoints", "ports", "addressType"] {
            updated[field] = want[field].clone();
        }
        for field in std::iter::once(&"labels").chain(also_metadata) {
            updated["metadata"][*field] = want["metadata"][*field].clone();
        }
        // Pinned to the version read: a concurrent change makes the controller look again.
        objects::update(api, &target, &slice_name, updated)
            .await
            .map_err(|e| Error::api(format!("updating endpointslice {slice_name}"), &e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Reconciler for Endpoints {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(svc) = self.cache.get(&key.namespace, &key.name) else {
            // The Service is gone: its slices go with it (owner references); its Endpoints
            // are removed here, as Kubernetes does.
            let target = target(self.endpoints, &key.namespace, Some(&key.name));
            return match objects::delete(&self.api, &target, &key.name, &Value::Null).await {
                Ok(_) => Ok(Action::Done),
                Err(e) if e.reason == "NotFound" => Ok(Action::Done),
                Err(e) => Err(Error::api(format!("deleting endpoints {}", key.name), &e)),
            };
        };
        if svc["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let Some(selector) = selector_of_service(&svc) else {
            return Ok(Action::Done);
        };
        let pods = self.pod_cache.list(&key.namespace);
        let members = members(&svc, &selector, &pods);
        self.sync_endpoints(&svc, desired_subsets(&members)).await?;
        self.sync_slices(&svc, desired_slices(&svc, &members))
            .await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Value> {
        Arc::new(json!({
            "metadata": { "name": name, "namespace": "default", "uid": name, "labels": { "app": "web" } },
            "spec": {
                "nodeName": "n1",
                "containers": [{ "name": "c", "ports": [{ "name": "http", "containerPort": 8080 }] }],
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
            },
        }))
    }

    fn service() -> Value {
        json!({
            "metadata": { "name": "web", "namespace": "default", "uid": "s" },
            "spec": {
                "selector": { "app": "web" },
                "ports": [
                    { "name": "http", "port": 80, "targetPort": "http" },
                    { "name": "metrics", "port": 9000, "targetPort": 9100 },
                ],
            },
        })
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports() {
        let svc = service();
        let selector = selector_of_service(&svc).unwrap();
        let mut other = (*pod("no-named-port", "10.0.0.3", true)).clone();
        other["spec"]["containers"][0]["ports"] = json!([]);
        let pods = [
            pod("a", "10.0.0.1", true),
            pod("b", "10.0.0.2", false),
            Arc::new(other),
            pod("no-ip", "", true),
        ];
        let members = members(&svc, &selector, &pods);
        assert_eq!(members.len(), 3);
        let subsets = desired_subsets(&members);
        let subsets = subsets.as_array().unwrap();
        assert_eq!(subsets.len(), 2, "{subsets:#?}");
        let full = subsets
            .iter()
            .find(|s| s["ports"].as_array().unwrap().len() == 2)
            .unwrap();
        assert_eq!(full["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(full["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert!(
            full["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"] == 8080)
        );
        let partial = subsets
            .iter()
            .find(|s| s["ports"].as_array().unwrap().len() == 1)
            .unwrap();
        assert_eq!(partial["ports"][0]["port"], 9100);
        let slices = desired_slices(&svc, &members);
        assert_eq!(slices.len(), 2);
        for slice in slices.values() {
            assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        }
    }

    #[test]
    fn terminating_pods_are_in_slices_only() {
        let svc = service();
        let selector = selector_of_service(&svc).unwrap();
        let mut doomed = (*pod("a", "10.0.0.1", true)).clone();
        doomed["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let members = members(&svc, &selector, &[Arc::new(doomed)]);
        assert_eq!(desired_subsets(&members), json!([]));
        let slices = desired_slices(&svc, &members);
        let endpoint = &slices.values().next().unwrap()["endpoints"][0];
        assert_eq!(
            endpoint["conditions"],
            json!({ "ready": false, "serving": true, "terminating": true })
        );
    }
}
