//! The node's view of Services (kube-proxy's job, and the cluster DNS's data): follows Services,
//! EndpointSlices and Pods, keeps the BPF service maps equal to what they ask for, and feeds the
//! DNS records.
//!
//! On start the maps still hold what the previous agent wrote, and the programs keep using them:
//! nothing is flushed; the first reconcile waits until every kind is listed, then writes only the
//! differences (ids, and so Maglev tables and affinity, stay as they were).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use apiary_agent_api::v1::{WatchDataplaneRequest, object_event::Type};
use apiary_api::{core_v1::Pod, core_v1::Service, discovery_v1::EndpointSlice};
use apiary_ebpf_common::{Backend, PROTO_UDP, ServiceKey, ServiceValue};
use futures::{FutureExt as _, StreamExt as _};

use super::context::Context;
use crate::{
    dataplane::{CtMap, ServiceMaps},
    dns::SharedRecords,
    services::{
        frontends::{self, Desired},
        plan::{self, Plan, Step},
    },
};

pub use crate::server::ServiceNames;

/// The kinds followed, each listed once before the first reconcile.
const KINDS: [&str; 3] = ["Service", "EndpointSlice", "Pod"];

/// Follows the cluster until the agent stops, re-watching after errors.
pub async fn follow(ctx: Arc<Context>, pin_dir: PathBuf, dns: SharedRecords, names: ServiceNames) {
    let mut reconciler = None;
    loop {
        if reconciler.is_none() {
            match Reconciler::load(&pin_dir) {
                Ok(loaded) => reconciler = Some(loaded),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "reading the service maps"),
            }
        }
        if let Some(reconciler) = reconciler.as_mut()
            && let Err(e) = watch(&ctx, reconciler, &dns, &names).await
        {
            tracing::warn!(error = %format!("{e:#}"), "service watch ended; re-watching");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch(
    ctx: &Context,
    reconciler: &mut Reconciler,
    dns: &SharedRecords,
    names: &ServiceNames,
) -> anyhow::Result<()> {
    let mut stream = ctx
        .agent
        .clone()
        .watch_dataplane(WatchDataplaneRequest {
            kinds: KINDS.map(str::to_owned).to_vec(),
        })
        .await?
        .into_inner();
    // A re-watch lists everything again: start from empty so that deletions missed while the
    // stream was down are noticed.
    let mut view = View::default();
    while let Some(event) = stream.next().await {
        view.apply(&event?, dns)?;
        // Take in whatever else has arrived before writing: a burst becomes one plan.
        while let Some(Some(event)) = stream.next().now_or_never() {
            view.apply(&event?, dns)?;
        }
        if view.synced >= KINDS.len() && view.dirty {
            view.dirty = false;
            let started = Instant::now();
            let desired = view.desired(&ctx.node.name);
            let written = tokio::task::block_in_place(|| reconciler.reconcile(&desired))?;
            if written > 0 {
                tracing::info!(
                    writes = written,
                    frontends = desired.frontends.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "service maps updated"
                );
            }
            *names.write().expect("names lock") = desired
                .frontends
                .iter()
                .map(|f| (f.key, f.service.to_string()))
                .collect();
        }
    }
    Ok(())
}

/// The Services and EndpointSlices seen, with each Service's frontends computed when it or one
/// of its slices changes (a change to one Service of 10,000 recomputes one).
#[derive(Default)]
struct View {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    /// Slice names by (namespace, service name).
    slices_of: BTreeMap<(String, String), BTreeSet<String>>,
    /// Each Service's frontends, as of its last change.
    frontends: BTreeMap<(String, String), Vec<frontends::Frontend>>,
    /// Services whose frontends must be computed again.
    stale: BTreeSet<(String, String)>,
    /// Kinds listed so far.
    synced: usize,
    dirty: bool,
}

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn service_of(slice: &EndpointSlice) -> Option<(String, String)> {
    let name = slice.metadata.labels.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone(), name.clone()))
}

impl View {
    fn apply(
        &mut self,
        event: &apiary_agent_api::v1::ObjectEvent,
        dns: &SharedRecords,
    ) -> anyhow::Result<()> {
        let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
        if kind == Type::Synced {
            self.synced += 1;
            self.dirty = true;
            return Ok(());
        }
        let deleted = kind == Type::Deleted;
        match event.kind.as_str() {
            "Service" => {
                let service: Service = serde_json::from_slice(&event.object_json)?;
                let key = key_of(&service.metadata);
                let mut records = dns.write().expect("dns lock");
                if deleted {
                    records.delete_service(&key.0, &key.1);
                    self.services.remove(&key);
                } else {
                    records.apply_service(&service);
                    self.services.insert(key.clone(), service);
                }
                self.stale.insert(key);
                self.dirty = true;
            }
            "EndpointSlice" => {
                let slice: EndpointSlice = serde_json::from_slice(&event.object_json)?;
                let key = key_of(&slice.metadata);
                let mut records = dns.write().expect("dns lock");
                // The service it belonged to, and the one it belongs to now.
                if let Some(old) = self.slices.get(&key).and_then(service_of) {
                    if let Some(names) = self.slices_of.get_mut(&old) {
                        names.remove(&key.1);
                    }
                    self.stale.insert(old);
                }
                if deleted {
                    records.delete_endpoint_slice(&key.0, &key.1);
                    self.slices.remove(&key);
                } else {
                    records.apply_endpoint_slice(&slice);
                    if let Some(owner) = service_of(&slice) {
                        self.slices_of
                            .entry(owner.clone())
                            .or_default()
                            .insert(key.1.clone());
                        self.stale.insert(owner);
                    }
                    self.slices.insert(key, slice);
                }
                self.dirty = true;
            }
            "Pod" => {
                let pod: Pod = serde_json::from_slice(&event.object_json)?;
                let mut records = dns.write().expect("dns lock");
                if deleted {
                    records.delete_pod(&pod.metadata.namespace, &pod.metadata.name);
                } else {
                    records.apply_pod(&pod);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Every frontend of this node: the stale Services' computed again, the others' as cached.
    fn desired(&mut self, node_name: &str) -> Desired {
        for key in std::mem::take(&mut self.stale) {
            let Some(service) = self.services.get(&key) else {
                self.frontends.remove(&key);
                continue;
            };
            let slices: Vec<EndpointSlice> = self
                .slices_of
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())).cloned())
                .collect();
            let computed = frontends::desired(std::slice::from_ref(service), &slices, node_name);
            self.frontends.insert(key, computed.frontends);
        }
        // Services claiming one frontend: the first by namespace/name keeps it, as
        // `frontends::desired` decides among the Services it is given.
        let mut all: Vec<frontends::Frontend> = Vec::new();
        let mut claimed = std::collections::HashSet::new();
        for frontends in self.frontends.values() {
            for frontend in frontends {
                if claimed.insert(frontend.key) {
                    all.push(frontend.clone());
                }
            }
        }
        all.sort_unstable_by_key(|f| f.key);
        Desired { frontends: all }
    }
}

fn key_of(meta: &apiary_api::meta::ObjectMeta) -> (String, String) {
    (meta.namespace.clone(), meta.name.clone())
}

/// The maps and what this agent knows they hold (read once, then kept in step with each write).
struct Reconciler {
    maps: ServiceMaps,
    ct: CtMap,
    services: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<u32, Backend>,
    /// Each frontend's table, as the set of backend ids it names.
    tables: BTreeMap<u32, BTreeSet<u32>>,
}

impl Reconciler {
    fn load(pin_dir: &std::path::Path) -> anyhow::Result<Self> {
        let maps = ServiceMaps::open(pin_dir)?;
        let ct = CtMap::open(pin_dir)?;
        let services = maps.frontends()?;
        let backends = maps.backends()?;
        let mut tables = BTreeMap::new();
        for value in services.values() {
            if let Some(table) = maps.table(value.id)? {
                tables.insert(value.id, table.backend_ids.iter().copied().collect());
            }
        }
        Ok(Self {
            maps,
            ct,
            services,
            backends,
            tables,
        })
    }

    /// Makes the maps hold `desired`; returns how many writes it took.
    fn reconcile(&mut self, desired: &Desired) -> anyhow::Result<usize> {
        let plan = plan::plan(desired, &self.services, &self.backends, &self.tables);
        if plan.is_empty() {
            return Ok(0);
        }
        let mut writes = 0;
        for step in plan.steps() {
            self.write(&step)?;
            writes += 1;
        }
        self.forget_stale_clients(&plan)?;
        Ok(writes)
    }

    fn write(&mut self, step: &Step<'_>) -> anyhow::Result<()> {
        match *step {
            Step::InsertBackend(id, backend) => {
                self.maps.insert_backend(id, backend)?;
                self.backends.insert(id, backend);
            }
            Step::WriteTable(id, table) => {
                self.maps.write_table(id, table)?;
                self.tables
                    .insert(id, table.backend_ids.iter().copied().collect());
            }
            Step::UpsertFrontend(key, value) => {
                self.maps.write_frontend(key, value)?;
                self.services.insert(key, value);
            }
            Step::DeleteFrontend(key) => {
                self.maps.remove_frontend_only(&key)?;
                self.services.remove(&key);
            }
            Step::DeleteTable(id) => {
                self.maps.remove_table(id)?;
                self.tables.remove(&id);
            }
            Step::DeleteBackend(id) => {
                self.maps.remove_backend(id)?;
                self.backends.remove(&id);
            }
        }
        Ok(())
    }

    /// After a plan: affinity entries that name a backend their frontend no longer has (or a
    /// frontend that is gone) go, so that the client chooses afresh; UDP flows of removed
    /// backends are flushed, so that a client's next datagram picks a live backend instead of
    /// vanishing (TCP flows keep going: a terminating backend finishes what it has).
    fn forget_stale_clients(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let tables_changed = plan.upsert_frontends.iter().any(|w| w.table.is_some())
            || !plan.delete_frontends.is_empty()
            || !plan.delete_tables.is_empty();
        if tables_changed {
            let tables = &self.tables;
            self.maps.prune_affinity(|service_id, backend_id| {
                tables
                    .get(&service_id)
                    .is_some_and(|ids| ids.contains(&backend_id))
            })?;
        }
        if !plan.delete_backends.is_empty() {
            let removed: BTreeSet<u32> = plan.delete_backends.iter().copied().collect();
            let flushed = self.ct.flush(|key, value| {
                key.protocol == PROTO_UDP && removed.contains(&value.backend_id)
            })?;
            if flushed > 0 {
                tracing::info!(entries = flushed, "flushed UDP flows of removed backends");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_agent_api::v1::ObjectEvent;

    fn event(kind: &str, object: serde_json::Value, r#type: Type) -> ObjectEvent {
        ObjectEvent {
            r#type: r#type as i32,
            kind: kind.to_owned(),
            object_json: serde_json::to_vec(&object).unwrap(),
            resource_version: 0,
        }
    }

    fn service(i: usize) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": format!("s{i}")},
            "spec": {
                "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                "clusterIPs": [format!("10.96.{}.{}", i / 250, i % 250 + 1)],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        })
    }

    fn slice(i: usize) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": format!("s{i}-abc"),
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("10.244.0.{}", i % 200 + 2)], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    }

    #[test]
    fn a_slice_moves_its_service_s_frontends_and_only_those_are_recomputed() {
        let dns: SharedRecords = Default::default();
        let mut view = View::default();
        for i in 0..3 {
            view.apply(&event("Service", service(i), Type::Added), &dns)
                .unwrap();
            view.apply(&event("EndpointSlice", slice(i), Type::Added), &dns)
                .unwrap();
        }
        let desired = view.desired("n1");
        assert_eq!(desired.frontends.len(), 3);
        assert!(desired.frontends.iter().all(|f| f.backends.len() == 1));
        // Deleting s1's slice leaves s1 without backends; the others keep theirs.
        view.apply(&event("EndpointSlice", slice(1), Type::Deleted), &dns)
            .unwrap();
        assert_eq!(view.stale.len(), 1);
        let desired = view.desired("n1");
        let empty: Vec<String> = desired
            .frontends
            .iter()
            .filter(|f| f.backends.is_empty())
            .map(|f| f.service.to_string())
            .collect();
        assert_eq!(empty, ["default/s1:http"]);
        // Deleting a Service drops its frontends.
        view.apply(&event("Service", service(0), Type::Deleted), &dns)
            .unwrap();
        assert_eq!(view.desired("n1").frontends.len(), 2);
    }

    /// How long one more Service costs with 10,000 present (run with `--release --ignored`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn reconcile_cost_with_ten_thousand_services() {
        let dns: SharedRecords = Default::default();
        let mut view = View::default();
        for i in 0..10_000 {
            view.apply(&event("Service", service(i), Type::Added), &dns)
                .unwrap();
            view.apply(&event("EndpointSlice", slice(i), Type::Added), &dns)
                .unwrap();
        }
        let started = Instant::now();
        let desired = view.desired("n1");
        let first = plan::plan(
            &desired,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        eprintln!(
            "10,000 services: desired + plan {:?} ({} writes)",
            started.elapsed(),
            first.steps().count()
        );
        // The maps as that plan leaves them.
        let services: BTreeMap<_, _> = first
            .upsert_frontends
            .iter()
            .map(|w| (w.key, w.value))
            .collect();
        let backends: BTreeMap<_, _> = first.insert_backends.iter().copied().collect();
        let tables: BTreeMap<u32, BTreeSet<u32>> = first
            .upsert_frontends
            .iter()
            .filter_map(|w| {
                w.table
                    .as_ref()
                    .map(|t| (w.value.id, t.backend_ids.iter().copied().collect()))
            })
            .collect();
        view.apply(&event("Service", service(10_000), Type::Added), &dns)
            .unwrap();
        let started = Instant::now();
        let desired = view.desired("n1");
        let desired_took = started.elapsed();
        let one = plan::plan(&desired, &services, &backends, &tables);
        eprintln!(
            "one more: desired {desired_took:?}, desired + plan {:?} ({} writes)",
            started.elapsed(),
            one.steps().count()
        );
    }
}
