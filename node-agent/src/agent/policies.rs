//! The node's NetworkPolicy: follows NetworkPolicies, Pods, Namespaces and the control plane's
//! SecurityIdentities; keeps the address → identity map (`IPCACHE`) equal to the cluster's pods
//! and the policy maps equal to what the policies compile to for this node's pods.
//!
//! A change recompiles only the local pods it can affect ([`policy::affected`]) and writes only
//! their differences. When a pod's policy changed, or a peer's identity did, the flows the
//! programs remembered are judged again and those no longer allowed are forgotten: revoked
//! connections stop, allowed ones go on.
//!
//! Like the service maps, the policy maps are pinned: a restarted agent reads nothing back but
//! recompiles from the API once everything is listed, and writes the whole plan again (entries
//! are idempotent; the programs keep enforcing the previous state meanwhile).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use apiary_agent_api::v1::{ObjectEvent, WatchDataplaneRequest, object_event::Type};
use apiary_api::{
    core_v1::{Namespace, Pod},
    networking_v1::NetworkPolicy,
};
use apiary_ebpf_common::IDENTITY_HOST;
use futures::{FutureExt as _, StreamExt as _};

use super::{
    context::Context,
    flows::SharedFlowNames,
    health::Check,
    identities::IdentityCache,
    policy_maps::{self, RuleTable},
};
use crate::{
    dataplane::PolicyMaps,
    policy::{
        self, Cluster, EndpointPolicy, Identity, IdentityIndex, PodRef,
        affected::{self, Inputs, PolicyChange},
    },
};

/// The kinds followed, each listed once before the first compile.
const KINDS: [&str; 4] = ["NetworkPolicy", "Pod", "Namespace", "SecurityIdentity"];
/// How soon pods whose veth was not there yet are tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the cluster until the agent stops, re-watching after errors.
pub async fn follow(ctx: Arc<Context>, pin_dir: PathBuf, names: SharedFlowNames) {
    let mut state = None;
    loop {
        if state.is_none() {
            match PolicyMaps::open(&pin_dir) {
                Ok(mut maps) => match maps.set_identity(ctx.node.ip, IDENTITY_HOST) {
                    // The node's own address is the host identity for as long as it runs.
                    Ok(()) => state = Some(Enforcer::new(maps, ctx.node.ip, names.clone())),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "writing IPCACHE"),
                },
                Err(e) => tracing::error!(error = %format!("{e:#}"), "opening the policy maps"),
            }
        }
        if let Some(state) = state.as_mut()
            && let Err(e) = watch(&ctx, state).await
        {
            tracing::warn!(error = %format!("{e:#}"), "policy watch ended; re-watching");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch(ctx: &Context, enforcer: &mut Enforcer) -> anyhow::Result<()> {
    let mut stream = ctx
        .agent
        .clone()
        .watch_dataplane(WatchDataplaneRequest {
            kinds: KINDS.map(str::to_owned).to_vec(),
        })
        .await?
        .into_inner();
    enforcer.restart();
    loop {
        let event = if enforcer.pending.is_empty() {
            stream.next().await
        } else {
            // Some pods' veths were not there yet: try again soon even if nothing happens.
            match tokio::time::timeout(RETRY, stream.next()).await {
                Ok(event) => event,
                // A tick: an event of no kind, which only marks the state for another pass.
                Err(_) => {
                    enforcer.dirty = true;
                    Some(Ok(ObjectEvent::default()))
                }
            }
        };
        let Some(event) = event else {
            return Ok(());
        };
        enforcer.apply(&event?)?;
        while let Some(Some(event)) = stream.next().now_or_never() {
            enforcer.apply(&event?)?;
        }
        if enforcer.synced >= KINDS.len() && enforcer.dirty {
            enforcer.dirty = false;
            let node = ctx.node.name.clone();
            let endpoints = ctx.network.endpoints().unwrap_or_default();
            tokio::task::block_in_place(|| enforcer.enforce(&node, &endpoints))?;
            ctx.health.pass(Check::Policies);
        }
    }
}

/// What the agent knows of the cluster's policies, and what it wrote.
struct Enforcer {
    maps: PolicyMaps,
    node_ip: Ipv4Addr,
    identities: IdentityCache,
    policies: BTreeMap<(String, String), NetworkPolicy>,
    pods: BTreeMap<(String, String), Pod>,
    namespaces: BTreeMap<String, Namespace>,
    /// Policies changed since the last compile, with what they were before (`None`: new).
    policy_changes: BTreeMap<(String, String), Option<NetworkPolicy>>,
    /// What the last compile saw, to tell what changed since.
    previous: Option<(Cluster, BTreeSet<PodRef>)>,
    /// Recompile every local pod next time (after a re-list, which loses the changes).
    recompile_all: bool,
    /// Addresses whose identity changed since flows were last judged again.
    changed_peers: BTreeSet<Ipv4Addr>,
    /// What this agent wrote to `IPCACHE` (the node's own address aside).
    ipcache: BTreeMap<Ipv4Addr, u32>,
    /// The compiled policy of every local pod.
    compiled: BTreeMap<PodRef, EndpointPolicy>,
    /// What the maps hold, per local pod.
    written: BTreeMap<PodRef, EndpointPolicy>,
    /// Each written pod's endpoint id (its host veth's ifindex), kept for its removal.
    endpoint_ids: BTreeMap<PodRef, u32>,
    /// Pods compiled but not written (no veth yet).
    pending: BTreeSet<PodRef>,
    rules: RuleTable,
    /// What verdict events' numbers stand for, for `apiary net observe`.
    names: SharedFlowNames,
    synced: usize,
    dirty: bool,
}

impl Enforcer {
    fn new(maps: PolicyMaps, node_ip: Ipv4Addr, names: SharedFlowNames) -> Self {
        Self {
            maps,
            node_ip,
            identities: IdentityCache::new(),
            policies: BTreeMap::new(),
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            policy_changes: BTreeMap::new(),
            previous: None,
            recompile_all: true,
            changed_peers: BTreeSet::new(),
            ipcache: BTreeMap::new(),
            compiled: BTreeMap::new(),
            written: BTreeMap::new(),
            endpoint_ids: BTreeMap::new(),
            pending: BTreeSet::new(),
            rules: RuleTable::default(),
            names,
            synced: 0,
            dirty: false,
        }
    }

    /// Before a (re)watch: everything is listed again.
    fn restart(&mut self) {
        self.identities.restart();
        self.policies.clear();
        self.pods.clear();
        self.namespaces.clear();
        self.policy_changes.clear();
        self.recompile_all = true;
        self.synced = 0;
    }

    fn apply(&mut self, event: &ObjectEvent) -> anyhow::Result<()> {
        let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
        if kind == Type::Unspecified {
            return Ok(());
        }
        if kind == Type::Synced {
            self.synced += 1;
            self.dirty = true;
            return Ok(());
        }
        self.identities.apply(event)?;
        let deleted = kind == Type::Deleted;
        match event.kind.as_str() {
            "NetworkPolicy" => {
                let policy: NetworkPolicy = serde_json::from_slice(&event.object_json)?;
                let key = (
                    policy.metadata.namespace.clone(),
                    policy.metadata.name.clone(),
                );
                let before = if deleted {
                    self.policies.remove(&key)
                } else {
                    self.policies.insert(key.clone(), policy)
                };
                self.policy_changes.entry(key).or_insert(before);
            }
            "Pod" => {
                let pod: Pod = serde_json::from_slice(&event.object_json)?;
                let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
                if deleted {
                    self.pods.remove(&key);
                } else {
                    self.pods.insert(key, pod);
                }
            }
            "Namespace" => {
                let namespace: Namespace = serde_json::from_slice(&event.object_json)?;
                if deleted {
                    self.namespaces.remove(&namespace.metadata.name);
                } else {
                    self.namespaces
                        .insert(namespace.metadata.name.clone(), namespace);
                }
            }
            _ => {}
        }
        self.dirty = true;
        Ok(())
    }

    /// Writes the address → identity changes, then recompiles the local pods the changes
    /// affect, writes their differences and forgets the flows no longer allowed.
    fn enforce(
        &mut self,
        node: &str,
        endpoints: &[(Ipv4Addr, apiary_ebpf_common::Endpoint)],
    ) -> anyhow::Result<()> {
        let changed = self.write_identities()?;
        self.changed_peers.extend(changed);
        let (cluster, local, ip_of) = self.snapshot(node);
        let index = match IdentityIndex::new(&cluster) {
            Ok(index) => index,
            // Identities being reassigned (a relabel in flight): the next event settles it.
            Err(e) => {
                tracing::debug!(error = %e, "identities not settled; policy unchanged");
                return Ok(());
            }
        };
        let affected = self.recompile(&cluster, &index, &local);
        // The recompiled, the not yet written, and the gone.
        let mut scope: BTreeSet<PodRef> = affected;
        scope.extend(self.pending.iter().cloned());
        scope.extend(
            self.written
                .keys()
                .filter(|pod| !self.compiled.contains_key(*pod))
                .cloned(),
        );
        let plan = policy::plan::plan_for(&self.written, &self.compiled, &scope);

        let by_ip: BTreeMap<Ipv4Addr, u32> = endpoints
            .iter()
            .map(|(ip, e)| (*ip, e.host_ifindex))
            .collect();
        let remembered = self.endpoint_ids.clone();
        let endpoint_of = |pod: &PodRef| {
            ip_of
                .get(pod)
                .and_then(|ip: &Ipv4Addr| by_ip.get(ip).copied())
                .or_else(|| remembered.get(pod).copied())
        };
        let skipped = policy_maps::apply(&mut self.maps, &plan, &mut self.rules, endpoint_of)?;
        self.pending = skipped.iter().cloned().collect();
        // Flows to judge again: at endpoints whose policy may deny more than before, and with
        // peers whose identity changed.
        let rechecked: BTreeSet<u32> = plan
            .endpoints
            .iter()
            .filter(|(pod, p)| p.may_revoke() && !self.pending.contains(*pod))
            .filter_map(|(pod, _)| endpoint_of(pod))
            .collect();
        // What was written is now the state; skipped pods keep what they had.
        for pod in &scope {
            if self.pending.contains(pod) {
                continue;
            }
            match self.compiled.get(pod) {
                Some(endpoint_policy) => {
                    if let Some(id) = ip_of.get(pod).and_then(|ip| by_ip.get(ip)) {
                        self.endpoint_ids.insert(pod.clone(), *id);
                    }
                    self.written.insert(pod.clone(), endpoint_policy.clone());
                }
                None => {
                    self.written.remove(pod);
                    self.endpoint_ids.remove(pod);
                }
            }
        }
        self.publish_names(&ip_of);
        self.previous = Some((cluster, local));
        self.policy_changes.clear();
        self.recompile_all = false;

        let changed_peers = std::mem::take(&mut self.changed_peers);
        if !rechecked.is_empty() || !changed_peers.is_empty() {
            let pod_ips: BTreeMap<u32, Ipv4Addr> = self
                .endpoint_ids
                .iter()
                .filter_map(|(pod, id)| Some((*id, *ip_of.get(pod)?)))
                .collect();
            let forgotten =
                policy_maps::expire_flows(&mut self.maps, &pod_ips, |endpoint, peer| {
                    rechecked.contains(&endpoint) || changed_peers.contains(&peer)
                })?;
            if forgotten > 0 {
                tracing::info!(forgotten, "flows no longer allowed forgotten");
            }
        }
        if !plan.is_empty() {
            tracing::info!(
                endpoints = plan.endpoints.len(),
                pending = self.pending.len(),
                "policy maps updated"
            );
        }
        Ok(())
    }
}

impl Enforcer {
    /// Writes the address → identity changes to `IPCACHE`; returns the addresses whose
    /// identity changed or went (a new address had no flows under another identity).
    fn write_identities(&mut self) -> anyhow::Result<BTreeSet<Ipv4Addr>> {
        let changes = self.identities.take_changes();
        let upserts: Vec<(Ipv4Addr, u32)> = changes
            .upserts
            .into_iter()
            .filter_map(|(ip, id)| match ip {
                IpAddr::V4(ip) => Some((ip, id)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let deletes: Vec<Ipv4Addr> = changes
            .deletes
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) if ip != self.node_ip => Some(ip),
                _ => None,
            })
            .collect();
        let changed = reassigned(&self.ipcache, &upserts, &deletes);
        for &(ip, identity) in &upserts {
            self.maps.set_identity(ip, identity)?;
            self.ipcache.insert(ip, identity);
        }
        for ip in deletes {
            self.maps.remove_identity(ip)?;
            self.ipcache.remove(&ip);
        }
        Ok(changed)
    }

    /// The cluster as policies see it (pods with their identities), this node's pods, and
    /// their addresses.
    fn snapshot(&self, node: &str) -> (Cluster, BTreeSet<PodRef>, BTreeMap<PodRef, Ipv4Addr>) {
        let mut cluster = Cluster::default();
        for namespace in self.namespaces.values() {
            cluster.add_namespace(namespace);
        }
        let mut local = BTreeSet::new();
        let mut ip_of = BTreeMap::new();
        for ((namespace, name), pod) in &self.pods {
            let Some(identity) = self.identities.identity_of_pod(namespace, name) else {
                continue;
            };
            cluster.add_pod(pod, Identity(identity));
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.parse().ok());
            if let Some(ip) = ip
                && pod.spec.node_name == node
                && !pod.spec.host_network
            {
                let pod_ref = PodRef::new(namespace.clone(), name.clone());
                ip_of.insert(pod_ref.clone(), ip);
                local.insert(pod_ref);
            }
        }
        (cluster, local, ip_of)
    }

    /// Recompiles the local pods the changes since the last compile affect (all of them after
    /// a re-list) into `compiled`, drops the pods gone, and returns those recompiled.
    fn recompile(
        &mut self,
        cluster: &Cluster,
        index: &IdentityIndex,
        local: &BTreeSet<PodRef>,
    ) -> BTreeSet<PodRef> {
        let affected = match &self.previous {
            Some((old_cluster, old_local)) if !self.recompile_all => {
                let changed: Vec<PolicyChange<'_>> = self
                    .policy_changes
                    .iter()
                    .map(|(key, before)| (before.as_ref(), self.policies.get(key)))
                    .collect();
                let policies: Vec<&NetworkPolicy> = self.policies.values().collect();
                affected::between(
                    Inputs {
                        cluster: old_cluster,
                        local: old_local,
                    },
                    Inputs { cluster, local },
                    &changed,
                    &policies,
                )
            }
            _ => local.clone(),
        };
        for pod in &affected {
            if let Some(info) = cluster.pods.get(pod) {
                let compiled =
                    policy::compile_endpoint(self.policies.values(), cluster, index, pod, info);
                self.compiled.insert(pod.clone(), compiled);
            }
        }
        self.compiled.retain(|pod, _| local.contains(pod));
        affected
    }

    /// Tells the verdict reader who is who now.
    fn publish_names(&self, local_ips: &BTreeMap<PodRef, Ipv4Addr>) {
        let mut names = self.names.write().expect("flow names lock");
        names.pods = self
            .pods
            .iter()
            .filter_map(|((namespace, name), pod)| {
                let ip = pod.status.as_ref()?.pod_ip.parse().ok()?;
                Some((ip, format!("{namespace}/{name}")))
            })
            .collect();
        names.endpoints = self
            .endpoint_ids
            .iter()
            .filter(|(pod, _)| local_ips.contains_key(*pod))
            .map(|(pod, id)| (*id, pod.to_string()))
            .collect();
        names.rules = self
            .rules
            .iter()
            .map(|(id, rule)| (id, rule.to_string()))
            .collect();
    }
}

/// The addresses among `upserts` and `deletes` that had another identity in `written`: flows
/// with them were judged under that identity and must be judged again. A new address had none
/// (checking those would walk the flow table for every pod started anywhere in the cluster).
fn reassigned(
    written: &BTreeMap<Ipv4Addr, u32>,
    upserts: &[(Ipv4Addr, u32)],
    deletes: &[Ipv4Addr],
) -> BTreeSet<Ipv4Addr> {
    let moved = upserts
        .iter()
        .filter(|(ip, id)| written.get(ip).is_some_and(|old| old != id))
        .map(|(ip, _)| *ip);
    let gone = deletes
        .iter()
        .filter(|ip| written.contains_key(ip))
        .copied();
    moved.chain(gone).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_that_change_hands_are_judged_again() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let c = Ipv4Addr::new(10, 0, 0, 3);
        let d = Ipv4Addr::new(10, 0, 0, 4);
        let written = BTreeMap::from([(a, 300), (b, 301), (c, 302)]);
        let changed = reassigned(&written, &[(a, 300), (b, 400), (d, 500)], &[c, d]);
        // a: same identity; b: another one; c: gone; d: new (and its delete is unknown).
        assert_eq!(changed, BTreeSet::from([b, c]));
    }
}
