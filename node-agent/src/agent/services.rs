//! The node's view of Services (kube-proxy's job, and the cluster DNS's data): follows Services,
//! EndpointSlices and Pods, keeps the BPF service maps equal to what they ask for, and feeds the
//! DNS records.
//!
//! On start the maps still hold what the previous agent wrote, and the programs keep using them:
//! nothing is flushed; the first reconcile waits until every kind is listed, then writes only the
//! differences (ids, and so Maglev tables and affinity, stay as they were).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use apiary_agent_api::v1::{WatchDataplaneRequest, object_event::Type};
use apiary_api::{core_v1::Pod, core_v1::Service, discovery_v1::EndpointSlice};
use apiary_ebpf_common::{Backend, CT_MASQUERADE, PROTO_UDP, ServiceKey, ServiceValue};
use futures::{FutureExt as _, StreamExt as _};

use super::{context::Context, health::Check};
use crate::{
    dataplane::{self, CtMap, ServiceMaps},
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
            match Reconciler::load(&pin_dir, ctx.sandboxes_dir.clone()) {
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
            // The first plan after a (re)watch covers everything (what changed while nobody
            // watched is unknown); later ones only what changed.
            let change = view.change(&ctx.node.name, !reconciler.in_step);
            let (written, frontends) =
                tokio::task::block_in_place(|| reconciler.reconcile(&change))?;
            reconciler.in_step = true;
            ctx.health.pass(Check::Services);
            if written > 0 {
                tracing::info!(
                    writes = written,
                    frontends,
                    took_us = started.elapsed().as_micros() as u64,
                    "service maps updated"
                );
            }
            let mut names = names.write().expect("names lock");
            match &change {
                Change::All(desired) => {
                    *names = desired
                        .frontends
                        .iter()
                        .map(|f| (f.key, f.service.to_string()))
                        .collect();
                }
                Change::Part { desired, keys } => {
                    for key in keys {
                        names.remove(key);
                    }
                    names.extend(
                        desired
                            .frontends
                            .iter()
                            .map(|f| (f.key, f.service.to_string())),
                    );
                }
            }
        }
    }
    reconciler.in_step = false;
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
    /// Which Service each frontend key is served for.
    owners: std::collections::HashMap<ServiceKey, (String, String)>,
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

    /// What the maps must now hold: every frontend (`all`, or when Services claim each other's
    /// frontends), else only the frontends of the Services that changed since the last call.
    fn change(&mut self, node_name: &str, all: bool) -> Change {
        let mut keys = BTreeSet::new();
        let mut part = Vec::new();
        let mut contested = false;
        for service in std::mem::take(&mut self.stale) {
            for old in self.frontends.remove(&service).unwrap_or_default() {
                keys.insert(old.key);
                self.owners.remove(&old.key);
            }
            let Some(object) = self.services.get(&service) else {
                continue;
            };
            let slices: Vec<EndpointSlice> = self
                .slices_of
                .get(&service)
                .into_iter()
                .flatten()
                .filter_map(|name| self.slices.get(&(service.0.clone(), name.clone())).cloned())
                .collect();
            let computed = frontends::desired(std::slice::from_ref(object), &slices, node_name);
            for frontend in &computed.frontends {
                keys.insert(frontend.key);
                // Another Service's frontend already: the rule for who wins is decided over
                // all of them.
                match self.owners.get(&frontend.key) {
                    Some(owner) if owner != &service => contested = true,
                    _ => {
                        self.owners.insert(frontend.key, service.clone());
                    }
                }
            }
            part.extend(computed.frontends.iter().cloned());
            self.frontends.insert(service, computed.frontends);
        }
        if all || contested {
            return Change::All(self.all());
        }
        part.sort_unstable_by_key(|f| f.key);
        part.dedup_by_key(|f| f.key);
        Change::Part {
            desired: Desired { frontends: part },
            keys,
        }
    }

    /// Every frontend of every Service; of Services claiming one frontend, the first by
    /// namespace/name keeps it, as `frontends::desired` decides among the Services it is given.
    fn all(&mut self) -> Desired {
        let mut all: Vec<frontends::Frontend> = Vec::new();
        self.owners.clear();
        for (service, frontends) in &self.frontends {
            for frontend in frontends {
                if let std::collections::hash_map::Entry::Vacant(owner) =
                    self.owners.entry(frontend.key)
                {
                    owner.insert(service.clone());
                    all.push(frontend.clone());
                }
            }
        }
        all.sort_unstable_by_key(|f| f.key);
        Desired { frontends: all }
    }
}

/// What a reconcile covers.
enum Change {
    /// Every frontend.
    All(Desired),
    /// The frontends of some Services (`desired`), and every key those Services had or have
    /// (`keys`): anything else stays as it is.
    Part {
        desired: Desired,
        keys: BTreeSet<ServiceKey>,
    },
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
    /// The ids of every frontend in `SERVICES`: new frontends take none of them.
    frontend_ids: HashSet<u32>,
    /// How many tables name each backend: a backend goes only when none does.
    backend_users: HashMap<u32, usize>,
    /// Whether the maps hold what the watch has seen so far (else the next plan covers all).
    in_step: bool,
    /// Whether a table lost a backend or a frontend went since affinity was last pruned.
    prune_affinity: bool,
    /// UDP backends removed by the current plan: sockets connected to them get closed.
    removed_udp: Vec<Backend>,
    /// Where the pods' network namespaces are (`<dir>/<uid>/net`).
    sandboxes_dir: PathBuf,
}

impl Reconciler {
    fn load(pin_dir: &std::path::Path, sandboxes_dir: PathBuf) -> anyhow::Result<Self> {
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
        let mut reconciler = Self {
            maps,
            ct,
            services,
            backends,
            tables,
            frontend_ids: HashSet::new(),
            backend_users: HashMap::new(),
            in_step: false,
            prune_affinity: false,
            removed_udp: Vec::new(),
            sandboxes_dir,
        };
        reconciler.index();
        Ok(reconciler)
    }

    /// Rebuilds the id indexes from the maps' contents.
    fn index(&mut self) {
        self.frontend_ids = self.services.values().map(|v| v.id).collect();
        self.backend_users.clear();
        for ids in self.tables.values() {
            for id in ids {
                *self.backend_users.entry(*id).or_default() += 1;
            }
        }
    }

    /// Makes the maps hold what `change` asks; returns how many writes it took and how many
    /// frontends it covered.
    fn reconcile(&mut self, change: &Change) -> anyhow::Result<(usize, usize)> {
        let (plan, covered) = match change {
            Change::All(desired) => (
                plan::plan(desired, &self.services, &self.backends, &self.tables),
                desired.frontends.len(),
            ),
            Change::Part { desired, keys } => {
                let services: BTreeMap<ServiceKey, ServiceValue> = keys
                    .iter()
                    .filter_map(|k| self.services.get(k).map(|v| (*k, *v)))
                    .collect();
                let tables: BTreeMap<u32, BTreeSet<u32>> = services
                    .values()
                    .filter_map(|v| self.tables.get(&v.id).map(|t| (v.id, t.clone())))
                    .collect();
                let plan = plan::plan_within(
                    desired,
                    &services,
                    &self.backends,
                    &tables,
                    &self.frontend_ids,
                );
                (plan, desired.frontends.len())
            }
        };
        if plan.is_empty() {
            return Ok((0, covered));
        }
        let mut writes = 0;
        for step in plan.steps() {
            if self.write(&step)? {
                writes += 1;
            }
        }
        if matches!(change, Change::All(_)) {
            self.index();
        }
        self.forget_stale_clients(&plan)?;
        Ok((writes, covered))
    }

    /// Writes one step, keeping the indexes in step; returns whether it wrote (a backend another
    /// part of the maps still uses is kept).
    fn write(&mut self, step: &Step<'_>) -> anyhow::Result<bool> {
        match *step {
            Step::InsertBackend(id, backend) => {
                self.maps.insert_backend(id, backend)?;
                self.backends.insert(id, backend);
            }
            Step::WriteTable(id, table) => {
                self.maps.write_table(id, table)?;
                let ids: BTreeSet<u32> = table.backend_ids.iter().copied().collect();
                for backend in &ids {
                    *self.backend_users.entry(*backend).or_default() += 1;
                }
                if let Some(old) = self.tables.insert(id, ids) {
                    self.release_backends(&old);
                    self.prune_affinity = true;
                }
            }
            Step::UpsertFrontend(key, value) => {
                self.maps.write_frontend(key, value)?;
                if let Some(old) = self.services.insert(key, value)
                    && old.id != value.id
                {
                    self.frontend_ids.remove(&old.id);
                    self.prune_affinity = true;
                }
                self.frontend_ids.insert(value.id);
            }
            Step::DeleteFrontend(key) => {
                self.maps.remove_frontend_only(&key)?;
                if let Some(old) = self.services.remove(&key) {
                    self.frontend_ids.remove(&old.id);
                }
                self.prune_affinity = true;
            }
            Step::DeleteTable(id) => {
                self.maps.remove_table(id)?;
                if let Some(old) = self.tables.remove(&id) {
                    self.release_backends(&old);
                }
                self.prune_affinity = true;
            }
            Step::DeleteBackend(id) => {
                if self.backend_users.get(&id).is_some_and(|n| *n > 0) {
                    return Ok(false);
                }
                self.maps.remove_backend(id)?;
                if let Some(backend) = self.backends.remove(&id)
                    && backend.protocol == PROTO_UDP
                {
                    self.removed_udp.push(backend);
                }
            }
        }
        Ok(true)
    }

    fn release_backends(&mut self, ids: &BTreeSet<u32>) {
        for id in ids {
            if let Some(users) = self.backend_users.get_mut(id) {
                *users = users.saturating_sub(1);
                if *users == 0 {
                    self.backend_users.remove(id);
                }
            }
        }
    }

    /// After a plan: affinity entries that name a backend their frontend no longer has (or a
    /// frontend that is gone) go, so that the client chooses afresh; UDP flows of removed
    /// backends are flushed, so that a client's next datagram picks a live backend instead of
    /// vanishing (TCP flows keep going: a terminating backend finishes what it has).
    fn forget_stale_clients(&mut self, plan: &Plan) -> anyhow::Result<()> {
        if std::mem::take(&mut self.prune_affinity) {
            let tables = &self.tables;
            self.maps.prune_affinity(|service_id, backend_id| {
                tables
                    .get(&service_id)
                    .is_some_and(|ids| ids.contains(&backend_id))
            })?;
        }
        let removed: BTreeSet<u32> = plan
            .delete_backends
            .iter()
            .copied()
            .filter(|id| !self.backends.contains_key(id))
            .collect();
        if !removed.is_empty() {
            let flushed = self.ct.flush(|key, value| {
                key.protocol == PROTO_UDP
                    && value.flags & CT_MASQUERADE == 0
                    && removed.contains(&value.backend_id)
            })?;
            if flushed > 0 {
                tracing::info!(entries = flushed, "flushed UDP flows of removed backends");
            }
        }
        let removed = std::mem::take(&mut self.removed_udp);
        if !removed.is_empty() {
            let closed = self.close_udp_sockets_to(&removed);
            if closed > 0 {
                tracing::info!(sockets = closed, "closed UDP sockets of removed backends");
            }
        }
        Ok(())
    }

    /// Closes the UDP sockets connected to `backends` in the node's namespace and every pod's;
    /// returns how many. Failures are logged: a namespace may vanish meanwhile.
    fn close_udp_sockets_to(&self, backends: &[Backend]) -> usize {
        let close_here = || {
            backends
                .iter()
                .map(|b| {
                    let addr = std::net::Ipv4Addr::from(b.addr);
                    dataplane::destroy_udp_sockets_to(addr, u16::from_be(b.port_be)).unwrap_or_else(
                        |e| {
                            tracing::debug!(error = %e, %addr, "closing UDP sockets");
                            0
                        },
                    )
                })
                .sum::<usize>()
        };
        let mut closed = close_here();
        let pods = std::fs::read_dir(&self.sandboxes_dir).into_iter().flatten();
        for pod in pods.flatten() {
            let netns = pod.path().join("net");
            match crate::netns::run_in(&netns, close_here) {
                Ok(n) => closed += n,
                Err(e) => tracing::debug!(error = %e, netns = %netns.display(), "entering"),
            }
        }
        closed
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
        let Change::All(desired) = view.change("n1", true) else {
            panic!("asked for all");
        };
        assert_eq!(desired.frontends.len(), 3);
        assert!(desired.frontends.iter().all(|f| f.backends.len() == 1));
        // Deleting s1's slice leaves s1 without backends; the others keep theirs.
        view.apply(&event("EndpointSlice", slice(1), Type::Deleted), &dns)
            .unwrap();
        assert_eq!(view.stale.len(), 1);
        let Change::Part { desired, keys } = view.change("n1", false) else {
            panic!("one Service changed");
        };
        assert_eq!(keys.len(), 1);
        let part: Vec<(String, usize)> = desired
            .frontends
            .iter()
            .map(|f| (f.service.to_string(), f.backends.len()))
            .collect();
        assert_eq!(part, [("default/s1:http".to_owned(), 0)]);
        // Deleting a Service: its key is covered, and it has no frontend any more.
        view.apply(&event("Service", service(0), Type::Deleted), &dns)
            .unwrap();
        let Change::Part { desired, keys } = view.change("n1", false) else {
            panic!("one Service changed");
        };
        assert_eq!((desired.frontends.len(), keys.len()), (0, 1));
        let Change::All(all) = view.change("n1", true) else {
            panic!("asked for all");
        };
        assert_eq!(all.frontends.len(), 2);
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
        let Change::All(desired) = view.change("n1", true) else {
            unreachable!()
        };
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
        let Change::Part { desired, keys } = view.change("n1", false) else {
            unreachable!()
        };
        let desired_took = started.elapsed();
        let in_use: HashSet<u32> = services.values().map(|v| v.id).collect();
        let part: BTreeMap<_, _> = keys
            .iter()
            .filter_map(|k| services.get(k).map(|v| (*k, *v)))
            .collect();
        let part_tables: BTreeMap<u32, BTreeSet<u32>> = part
            .values()
            .filter_map(|v| tables.get(&v.id).map(|t| (v.id, t.clone())))
            .collect();
        let one = plan::plan_within(&desired, &part, &backends, &part_tables, &in_use);
        eprintln!(
            "one more: desired {desired_took:?}, desired + plan {:?} ({} writes)",
            started.elapsed(),
            one.steps().count()
        );
    }
}
