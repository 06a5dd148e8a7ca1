//! The EndpointSlice mirroring controller: the hand-written Endpoints of a Service without a
//! selector are mirrored into EndpointSlices, so that consumers of slices (the node agents'
//! service load balancing) see them too, as Kubernetes' `endpointslicemirroring-controller`
//! does.
//!
//! Ready addresses become ready endpoints, `notReadyAddresses` endpoints with `ready: false`;
//! each distinct port set (and address family) gets its own slices of at most 100 endpoints,
//! labelled with the Service's name and managed by this controller, owned by the Endpoints. The
//! slices go when the Endpoints or the Service does, when the Service gains a selector (the
//! Endpoints controller takes over), or when the Endpoints is labelled
//! `endpointslice.kubernetes.io/skip-mirror: "true"`. Slices managed by anyone else are never
//! touched.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    endpoints::{SERVICE_NAME_LABEL, array, fnv, selector_of_service, write_slices},
    labels_of, list_fresh, owner_reference, resource,
    runtime::{self, Action, Cache, Queue, Reconciler, Result},
    str_of,
};
use crate::apiserver::{Api, resources::ResourceType};

const COMPONENT: &str = "endpointslicemirroring-controller";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The `managed-by` value of mirrored slices.
pub const MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";
/// Endpoints labelled with this set to `"true"` are not mirrored.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Endpoints per slice, as Kubernetes' `--mirroring-max-endpoints-per-subset` default.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const CONCURRENCY: usize = 4;
const RESYNC: Duration = Duration::from_secs(30);

/// Runs the mirroring controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let endpoints = resource(&api, "", "v1", "endpoints");
    let services = resource(&api, "", "v1", "services");
    let slices = resource(&api, "discovery.k8s.io", "v1", "endpointslices");
    let cache = Cache::new(endpoints);
    let service_cache = Cache::new(services);
    let queue = Queue::new();
    let reconciler = Arc::new(Mirror {
        api: Arc::clone(&api),
        cache: cache.clone(),
        service_cache: service_cache.clone(),
        slices,
    });
    // Endpoints and Service of one name share a key: that of the Endpoints.
    let by_name = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |object: &Value| queue.add(cache.key_of(object))
    };
    // A mirrored slice changed or deleted by hand is put back.
    let slice_changed = {
        let queue = Arc::clone(&queue);
        move |slice: &Value| {
            let labels = labels_of(slice);
            if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
                return;
            }
            if let Some(service) = labels.get(SERVICE_NAME_LABEL) {
                queue.add(ObjectRef {
                    resource: endpoints.plural.to_owned(),
                    namespace: str_of(slice, "/metadata/namespace").to_owned(),
                    name: service.clone(),
                });
            }
        }
    };
    // Endpoints reconciled before the Services are listed would lose their mirrored slices.
    let read = vec![cache.clone(), service_cache.clone()];
    tokio::join!(
        runtime::reflect(
            Arc::clone(&api),
            cache.clone(),
            by_name.clone(),
            shutdown.clone()
        ),
        runtime::reflect(Arc::clone(&api), service_cache, by_name, shutdown.clone()),
        runtime::reflect(
            Arc::clone(&api),
            Cache::new(slices),
            slice_changed,
            shutdown.clone()
        ),
        runtime::resync(cache, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process_once_synced(read, reconciler, queue, CONCURRENCY, shutdown),
    );
}

struct Mirror {
    api: Arc<Api>,
    cache: Cache,
    service_cache: Cache,
    slices: &'static ResourceType,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").finish_non_exhaustive()
    }
}

/// Whether `endpoints` of `service` are mirrored: a Service without selector, neither being
/// deleted, and no `skip-mirror` label.
fn mirrored(service: &Value, endpoints: &Value) -> bool {
    let deleting = |o: &Value| o["metadata"]["deletionTimestamp"].is_string();
    selector_of_service(service).is_none()
        && !deleting(service)
        && !deleting(endpoints)
        && labels_of(endpoints)
            .get(SKIP_MIRROR_LABEL)
            .map(String::as_str)
            != Some("true")
}

/// One endpoint of a mirrored slice, from an Endpoints address.
fn endpoint(address: &Value, ready: bool) -> Value {
    let mut endpoint = json!({ "addresses": [address["ip"]], "conditions": { "ready": ready } });
    if let Some(hostname) = address["hostname"].as_str().filter(|h| !h.is_empty()) {
        endpoint["hostname"] = json!(hostname);
    }
    for field in ["nodeName", "targetRef"] {
        if !address[field].is_null() {
            endpoint[field] = address[field].clone();
        }
    }
    endpoint
}

/// A slice port from an Endpoints port (`TCP` when the protocol is unset).
fn port(port: &Value) -> Value {
    let mut mirrored = json!({
        "name": port["name"].as_str().unwrap_or_default(),
        "port": port["port"],
        "protocol": port["protocol"].as_str().unwrap_or("TCP"),
    });
    if let Some(app_protocol) = port["appProtocol"].as_str() {
        mirrored["appProtocol"] = json!(app_protocol);
    }
    mirrored
}

/// The endpoints of one port set and address family, and those ports.
struct Group {
    ports: Vec<Value>,
    endpoints: Vec<Value>,
}

/// The slices mirroring `endpoints`, by name: subsets grouped by port set and address family,
/// cut into slices of at most [`MAX_ENDPOINTS_PER_SLICE`].
fn desired_slices(endpoints: &Value) -> BTreeMap<String, Value> {
    let name = str_of(endpoints, "/metadata/name");
    // By ports (as a sorted list of their JSON, so that subsets listing them in another order
    // merge) and address family.
    let mut groups: BTreeMap<(Vec<String>, &str), Group> = BTreeMap::new();
    for subset in array(&endpoints["subsets"]) {
        let ports: Vec<Value> = array(&subset["ports"]).iter().map(port).collect();
        let mut port_key: Vec<String> = ports.iter().map(Value::to_string).collect();
        port_key.sort();
        for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for address in array(&subset[field]) {
                let family = match address["ip"].as_str().map(str::parse::<IpAddr>) {
                    Some(Ok(IpAddr::V4(_))) => "IPv4",
                    Some(Ok(IpAddr::V6(_))) => "IPv6",
                    _ => continue,
                };
                // The first subset's port order is the slice's.
                let group = groups
                    .entry((port_key.clone(), family))
                    .or_insert_with(|| Group {
                        ports: ports.clone(),
                        endpoints: Vec::new(),
                    });
                // An address listed twice for the same ports is one endpoint (the first).
                if group
                    .endpoints
                    .iter()
                    .all(|e| e["addresses"][0] != address["ip"])
                {
                    group.endpoints.push(endpoint(address, ready));
                }
            }
        }
    }
    // Labels: the Endpoints', without the ones this controller sets or reads.
    let mut labels: serde_json::Map<String, Value> = labels_of(endpoints)
        .into_iter()
        .filter(|(k, _)| k != SKIP_MIRROR_LABEL)
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    labels.insert(SERVICE_NAME_LABEL.into(), json!(name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    let prefix: String = name.chars().take(40).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let mut slices = BTreeMap::new();
    for ((port_key, family), group) in groups {
        for (chunk, members) in group.endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
            let slice_name = format!(
                "{prefix}-mirror-{:08x}",
                fnv(&format!("{family} {port_key:?} {chunk}"))
            );
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": endpoints["metadata"]["namespace"],
                    "labels": labels,
                    "ownerReferences": [owner_reference(endpoints, "v1", "Endpoints")],
                },
                "addressType": family,
                "endpoints": members,
                "ports": group.ports,
            });
            slices.insert(slice_name, slice);
        }
    }
    slices
}

impl Mirror {
    /// Makes the mirrored slices of `key` exactly `desired`, touching only slices managed by
    /// this controller.
    async fn sync(&self, key: &ObjectRef, desired: BTreeMap<String, Value>) -> Result<()> {
        let namespace = key.namespace.as_str();
        let existing: Vec<Value> = list_fresh(&self.api, self.slices, namespace)
            .await?
            .into_iter()
            .filter(|s| {
                let labels = labels_of(s);
                labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                    && labels.get(SERVICE_NAME_LABEL) == Some(&key.name)
            })
            .collect();
        write_slices(
            &self.api,
            self.slices,
            namespace,
            &existing,
            desired,
            &["ownerReferences"],
        )
        .await
    }
}

#[async_trait::async_trait]
impl Reconciler for Mirror {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let endpoints = self.cache.get(&key.namespace, &key.name);
        let service = self.service_cache.get(&key.namespace, &key.name);
        let desired = match (&service, &endpoints) {
            (Some(service), Some(endpoints)) if mirrored(service, endpoints) => {
                desired_slices(endpoints)
            }
            _ => BTreeMap::new(),
        };
        self.sync(key, desired).await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(subsets: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "db",
                "namespace": "default",
                "uid": "e1",
                "labels": { "app": "db", SKIP_MIRROR_LABEL: "false" },
            },
            "subsets": subsets,
        })
    }

    #[test]
    fn addresses_become_endpoints_grouped_by_ports_and_family() {
        let ep = endpoints(json!([
            {
                "addresses": [{ "ip": "192.0.2.1", "nodeName": "n1", "hostname": "db-0" }],
                "notReadyAddresses": [{ "ip": "192.0.2.2" }],
                "ports": [{ "name": "sql", "port": 5432 }, { "name": "metrics", "port": 9187, "protocol": "TCP" }],
            },
            {
                // The same ports in another order: the same slice (192.0.2.1 only once).
                "addresses": [{ "ip": "192.0.2.3" }, { "ip": "2001:db8::3" }, { "ip": "bogus" }, { "ip": "192.0.2.1" }],
                "ports": [{ "name": "metrics", "port": 9187 }, { "name": "sql", "port": 5432 }],
            },
            {
                "addresses": [{ "ip": "192.0.2.4" }],
                "ports": [{ "name": "dns", "port": 53, "protocol": "UDP" }],
            },
        ]));
        let slices = desired_slices(&ep);
        assert_eq!(slices.len(), 3, "{slices:#?}");
        let by_ips = |family: &str, port: i64| {
            slices
                .values()
                .find(|s| {
                    s["addressType"] == family
                        && s["ports"].to_string().contains(&format!("\"port\":{port}"))
                })
                .unwrap_or_else(|| panic!("no {family} slice with port {port}"))
        };
        let sql = by_ips("IPv4", 5432);
        assert_eq!(
            sql["endpoints"],
            json!([
                { "addresses": ["192.0.2.1"], "conditions": { "ready": true }, "hostname": "db-0", "nodeName": "n1" },
                { "addresses": ["192.0.2.2"], "conditions": { "ready": false } },
                { "addresses": ["192.0.2.3"], "conditions": { "ready": true } },
            ])
        );
        assert_eq!(
            sql["ports"],
            json!([
                { "name": "sql", "port": 5432, "protocol": "TCP" },
                { "name": "metrics", "port": 9187, "protocol": "TCP" },
            ])
        );
        let labels = &sql["metadata"]["labels"];
        assert_eq!(labels[SERVICE_NAME_LABEL], "db");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["app"], "db");
        assert!(labels[SKIP_MIRROR_LABEL].is_null());
        assert_eq!(sql["metadata"]["ownerReferences"][0]["kind"], "Endpoints");
        assert_eq!(sql["metadata"]["ownerReferences"][0]["uid"], "e1");
        let v6 = by_ips("IPv6", 5432);
        assert_eq!(v6["endpoints"][0]["addresses"][0], "2001:db8::3");
        let dns = by_ips("IPv4", 53);
        assert_eq!(dns["ports"][0]["protocol"], "UDP");
        // Names are stable: the same Endpoints gives the same slices.
        assert_eq!(
            desired_slices(&ep).keys().collect::<Vec<_>>(),
            slices.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn large_subsets_are_cut_into_slices_of_one_hundred() {
        let addresses: Vec<Value> = (0..250)
            .map(|i| json!({ "ip": format!("10.0.{}.{}", i / 200, i % 200 + 1) }))
            .collect();
        let ep = endpoints(json!([{ "addresses": addresses, "ports": [{ "port": 80 }] }]));
        let slices = desired_slices(&ep);
        let mut sizes: Vec<usize> = slices
            .values()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .collect();
        sizes.sort();
        assert_eq!(sizes, [50, 100, 100]);
    }

    #[test]
    fn only_selectorless_services_without_skip_label_are_mirrored() {
        let ep = endpoints(json!([]));
        let plain = json!({ "metadata": { "name": "db" }, "spec": { "ports": [{ "port": 80 }] } });
        assert!(mirrored(&plain, &ep));
        let selecting =
            json!({ "metadata": { "name": "db" }, "spec": { "selector": { "app": "db" } } });
        assert!(!mirrored(&selecting, &ep));
        let mut skipped = ep.clone();
        skipped["metadata"]["labels"][SKIP_MIRROR_LABEL] = json!("true");
        assert!(!mirrored(&plain, &skipped));
        let mut deleting = plain.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert!(!mirrored(&deleting, &ep));
        // No addresses: nothing to mirror.
        assert!(desired_slices(&ep).is_empty());
    }
}
