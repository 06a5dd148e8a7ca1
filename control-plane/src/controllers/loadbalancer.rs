//! LoadBalancer IP allocation (like Cilium's LB-IPAM or MetalLB's controller): every Service of
//! `type: LoadBalancer` without a `spec.loadBalancerClass` (those belong to another
//! implementation) gets an address of the configured pools in `status.loadBalancer.ingress`,
//! which the node agents then serve in eBPF.
//!
//! - A Service asking for addresses (`spec.loadBalancerIP`, or the annotation
//!   [`IPS_ANNOTATION`], comma-separated; both together are one request) gets exactly those
//!   when they are in a pool and no other Service holds them; otherwise it gets nothing and a
//!   Warning Event `AllocationFailed`.
//! - Any other gets the lowest free address of the pools, in the order they were given,
//!   without each CIDR's network and broadcast addresses. An address is one Service's, except
//!   that Services with the same [`SHARING_KEY_ANNOTATION`] and no port in common may share
//!   one (such a Service takes the lowest address it may share before a free one).
//! - The status is the allocation: it survives restarts, and the in-use set is rebuilt from
//!   every Service's status before anything new is handed out. Allocation is serialised (one
//!   lock around every reconcile), so two Services created at once never share an address.
//! - A Service deleted or changed to another type frees its address (and a changed type loses
//!   the status); a Service waiting for an address is looked at again as soon as one is freed.
//! - An address no longer inside any pool (the pools changed) is replaced by a new one.
//!
//! Without any pool the controller does not run: LoadBalancer Services stay `<pending>`, as on
//! bare-metal Kubernetes, and a status written by someone else is left alone. IPv4 only.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use super::{
    Pin, get_fresh, put_status, record_event, record_warning, resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
    str_of,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "lbipam-controller";
/// Addresses a Service asks for, comma-separated (like Cilium's `lbipam.cilium.io/ips`).
pub const IPS_ANNOTATION: &str = "lbipam.apiary.dev/ips";
/// Services with the same value and no port (number and protocol) in common may share an
/// address (like Cilium's `lbipam.cilium.io/sharing-key`).
pub const SHARING_KEY_ANNOTATION: &str = "lbipam.apiary.dev/sharing-key";
const RESYNC: Duration = Duration::from_secs(30);
/// How long to wait before listing again when the start-up listing fails.
const RELIST: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Pools

/// One address pool: an IPv4 CIDR. All its addresses but the network and broadcast ones are
/// handed out (all of a /31 or /32, which have none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    base: Ipv4Addr,
    prefix_len: u8,
}

impl FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let base: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length (0 to 32)"))?;
        Self::new(base, prefix_len)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl Pool {
    /// The CIDR `base/prefix_len`; an error if the prefix is longer than 32 bits or `base` has
    /// host bits set.
    pub fn new(base: Ipv4Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!("{prefix_len} is not a prefix length (0 to 32)"));
        }
        let pool = Self { base, prefix_len };
        if u32::from(base) & !pool.mask() != 0 {
            return Err(format!("{pool} has host bits set"));
        }
        Ok(pool)
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The first and last address of the CIDR.
    fn bounds(self) -> (u32, u32) {
        let first = u32::from(self.base);
        (first, first | !self.mask())
    }

    /// The first and last address handed out.
    fn usable(self) -> (u32, u32) {
        let (first, last) = self.bounds();
        if self.prefix_len >= 31 {
            (first, last)
        } else {
            (first + 1, last - 1)
        }
    }

    /// Whether `ip` may be handed out from this pool.
    fn contains(self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.usable();
        (first..=last).contains(&u32::from(ip))
    }
}

fn overlap(a: Pool, b: Pool) -> bool {
    let ((a0, a1), (b0, b1)) = (a.bounds(), b.bounds());
    a0 <= b1 && b0 <= a1
}

/// Checks that no two pools overlap (an address would be in two pools), nor a pool one of the
/// `reserved` networks (by name: the service network, the pod network).
pub fn check_pools(pools: &[Pool], reserved: &[(&str, Pool)]) -> Result<(), String> {
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            if overlap(*a, *b) {
                return Err(format!("the pools {a} and {b} overlap"));
            }
        }
        if let Some((name, network)) = reserved.iter().find(|(_, r)| overlap(*a, *r)) {
            return Err(format!("the pool {a} overlaps the {name} {network}"));
        }
    }
    Ok(())
}

fn in_pools(pools: &[Pool], ip: Ipv4Addr) -> bool {
    pools.iter().any(|p| p.contains(ip))
}

fn describe(pools: &[Pool]) -> String {
    pools
        .iter()
        .map(Pool::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Allocations

/// The Service an address is allocated to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    namespace: String,
    name: String,
    uid: String,
}

impl Owner {
    fn of(svc: &Value) -> Self {
        Self {
            namespace: str_of(svc, "/metadata/namespace").to_owned(),
            name: str_of(svc, "/metadata/name").to_owned(),
            uid: str_of(svc, "/metadata/uid").to_owned(),
        }
    }

    fn is(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && self.name == name
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service holding an address, with what decides whether another may share it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    owner: Owner,
    /// The [`SHARING_KEY_ANNOTATION`], if any.
    sharing_key: Option<String>,
    /// (port, protocol) of each service port.
    ports: BTreeSet<(i64, String)>,
}

impl Holder {
    fn of(svc: &Value) -> Self {
        let sharing_key = str_of(
            svc,
            &format!("/metadata/annotations/{}", pointer(SHARING_KEY_ANNOTATION)),
        );
        Self {
            owner: Owner::of(svc),
            sharing_key: (!sharing_key.is_empty()).then(|| sharing_key.to_owned()),
            ports: svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let protocol = p["protocol"].as_str().unwrap_or("TCP");
                    (p["port"].as_i64().unwrap_or(0), protocol.to_owned())
                })
                .collect(),
        }
    }

    /// Whether `self` and `other` may hold one address: the same Service, or the same
    /// sharing key and no port in common.
    fn compatible(&self, other: &Self) -> bool {
        self.owner == other.owner
            || (self.sharing_key.is_some()
                && self.sharing_key == other.sharing_key
                && self.ports.is_disjoint(&other.ports))
    }
}

/// The addresses in use, and what was last reported about each Service that got none.
#[derive(Debug, Default)]
struct Allocations {
    /// The holders of each address in use: one, or several sharing it.
    by_ip: BTreeMap<Ipv4Addr, Vec<Holder>>,
    /// The last `AllocationFailed` message per (namespace, name), so that a failure is
    /// reported when it first happens (or changes), not on every resync.
    reported: HashMap<(String, String), String>,
}

impl Allocations {
    /// A holder of `ip` that `me` may not share it with.
    fn conflict(&self, ip: Ipv4Addr, me: &Holder) -> Option<&Owner> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .find(|h| !h.compatible(me))
            .map(|h| &h.owner)
    }

    fn available_to(&self, ip: Ipv4Addr, me: &Holder) -> bool {
        self.conflict(ip, me).is_none()
    }

    /// The addresses held under the Service's name (by this or an earlier object of the name).
    fn held_by(&self, namespace: &str, name: &str) -> Vec<Ipv4Addr> {
        self.by_ip
            .iter()
            .filter(|(_, holders)| holders.iter().any(|h| h.owner.is(namespace, name)))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Frees what the Service's name holds except `keep`; whether anything was freed.
    fn release(&mut self, namespace: &str, name: &str, keep: &[Ipv4Addr]) -> bool {
        let mut freed = false;
        self.by_ip.retain(|ip, holders| {
            if !keep.contains(ip) {
                let before = holders.len();
                holders.retain(|h| !h.owner.is(namespace, name));
                freed |= holders.len() != before;
            }
            !holders.is_empty()
        });
        freed
    }

    /// Records `holder` on `ip`, replacing what it recorded before (its ports may have changed).
    fn claim(&mut self, ip: Ipv4Addr, holder: Holder) {
        let holders = self.by_ip.entry(ip).or_default();
        holders.retain(|h| !h.owner.is(&holder.owner.namespace, &holder.owner.name));
        holders.push(holder);
    }

    /// The address for `me`: with a sharing key, the lowest one it may share; otherwise (or
    /// when there is none) the lowest free one. Pools in order.
    fn lowest_available(&self, pools: &[Pool], me: &Holder) -> Option<Ipv4Addr> {
        let shared = me.sharing_key.as_ref().and_then(|_| {
            pools.iter().find_map(|pool| {
                let (first, last) = pool.usable();
                self.by_ip
                    .range(Ipv4Addr::from(first)..=Ipv4Addr::from(last))
                    .find(|(_, holders)| holders.iter().all(|h| h.compatible(me)))
                    .map(|(ip, _)| *ip)
            })
        });
        shared.or_else(|| {
            pools.iter().find_map(|pool| {
                let (first, last) = pool.usable();
                // Each step past `first` skips one address in use: at most `by_ip.len()` steps.
                (first..=last)
                    .map(Ipv4Addr::from)
                    .find(|ip| !self.by_ip.contains_key(ip))
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// Whether this controller assigns the Service's addresses.
fn managed(svc: &Value) -> bool {
    svc["spec"]["type"] == "LoadBalancer"
        && svc["spec"]["loadBalancerClass"]
            .as_str()
            .is_none_or(str::is_empty)
}

/// The addresses in the Service's status, as written.
fn status_ips(svc: &Value) -> Vec<String> {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(str::to_owned))
        .collect()
}

fn has_ingress(svc: &Value) -> bool {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .is_some_and(|i| !i.is_empty())
}

/// The addresses the Service asks for (annotation, then `spec.loadBalancerIP`), without
/// repeats; an error names the first that is not an IPv4 address.
fn requested(svc: &Value) -> Result<Vec<Ipv4Addr>, String> {
    let annotation = str_of(
        svc,
        &format!("/metadata/annotations/{}", pointer(IPS_ANNOTATION)),
    );
    let field = str_of(svc, "/spec/loadBalancerIP");
    let mut ips = Vec::new();
    for text in annotation.split(',').chain([field]) {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let ip: Ipv4Addr = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// `key` escaped for a JSON pointer.
fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What a managed Service should have.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// These addresses; `replaced` are those of the status that had to go (outside the pools
    /// or held by another Service).
    Assign {
        ips: Vec<Ipv4Addr>,
        replaced: Vec<String>,
    },
    /// No address, for this reason.
    Fail(String),
}

fn decide(svc: &Value, pools: &[Pool], allocations: &Allocations) -> Decision {
    let me = Holder::of(svc);
    let requested = match requested(svc) {
        Ok(ips) => ips,
        Err(reason) => return Decision::Fail(reason),
    };
    if !requested.is_empty() {
        for ip in &requested {
            if !in_pools(pools, *ip) {
                return Decision::Fail(format!(
                    "{ip} is not in any address pool ({})",
                    describe(pools)
                ));
            }
            if let Some(holder) = allocations.conflict(*ip, &me) {
                return Decision::Fail(format!("{ip} is already allocated to \"{holder}\""));
            }
        }
        return Decision::Assign {
            ips: requested,
            replaced: Vec::new(),
        };
    }
    // What it has (the status, or a claim whose status write has not happened yet) it keeps.
    let current = status_ips(svc);
    let mut keep: Vec<Ipv4Addr> = Vec::new();
    let mut replaced = Vec::new();
    for text in &current {
        match text.parse::<Ipv4Addr>() {
            Ok(ip) if in_pools(pools, ip) && allocations.available_to(ip, &me) => {
                if !keep.contains(&ip) {
                    keep.push(ip);
                }
            }
            _ => replaced.push(text.clone()),
        }
    }
    if keep.is_empty() {
        keep = allocations
            .held_by(&me.owner.namespace, &me.owner.name)
            .into_iter()
            .filter(|ip| in_pools(pools, *ip) && allocations.available_to(*ip, &me))
            .collect();
    }
    if keep.is_empty() {
        match allocations.lowest_available(pools, &me) {
            Some(ip) => keep.push(ip),
            None => {
                return Decision::Fail(format!(
                    "no available IPs in the address pools ({})",
                    describe(pools)
                ));
            }
        }
    }
    Decision::Assign {
        ips: keep,
        replaced,
    }
}

fn ingress(ips: &[Ipv4Addr]) -> Value {
    Value::Array(
        ips.iter()
            .map(|ip| json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
            .collect(),
    )
}

/// The Service's status with `ingress` as its load balancer's addresses.
fn status_with(svc: &Value, ingress: Value) -> Value {
    let mut status = match &svc["status"] {
        Value::Object(o) => Value::Object(o.clone()),
        _ => json!({}),
    };
    status["loadBalancer"] = if ingress.as_array().is_some_and(|i| !i.is_empty()) {
        json!({ "ingress": ingress })
    } else {
        json!({})
    };
    status
}

/// Builds the in-use set from the Services' statuses, oldest Service first (so that if two
/// statuses name one address they may not share, the older Service keeps it).
fn rebuild(services: &[Value], pools: &[Pool]) -> Allocations {
    let mut managed: Vec<&Value> = services.iter().filter(|s| managed(s)).collect();
    managed.sort_by_key(|s| {
        (
            str_of(s, "/metadata/creationTimestamp").to_owned(),
            str_of(s, "/metadata/namespace").to_owned(),
            str_of(s, "/metadata/name").to_owned(),
        )
    });
    let mut allocations = Allocations::default();
    for svc in managed {
        let holder = Holder::of(svc);
        for ip in status_ips(svc).iter().filter_map(|t| t.parse().ok()) {
            if in_pools(pools, ip) && allocations.available_to(ip, &holder) {
                allocations.claim(ip, holder.clone());
            }
        }
    }
    allocations
}

// ---------------------------------------------------------------------------------------------
// The controller

/// Runs the LoadBalancer IP allocator until `shutdown` turns true; returns at once without
/// pools.
pub async fn run(api: Arc<Api>, pools: Vec<Pool>, mut shutdown: watch::Receiver<bool>) {
    if pools.is_empty() {
        return;
    }
    let services = resource(&api, "", "v1", "services");
    // Nothing is handed out before every address already in a status is known.
    let allocations = loop {
        match list_all(&api, services).await {
            Ok(listing) => break rebuild(&listing, &pools),
            Err(e) => {
                tracing::warn!(error = %e, "listing services failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RELIST) => {}
                    () = runtime::stopped(&mut shutdown) => return,
                }
            }
        }
    };
    tracing::info!(
        pools = %describe(&pools),
        in_use = allocations.by_ip.len(),
        "allocating LoadBalancer addresses"
    );
    let cache = Cache::new(services);
    let queue = Queue::new();
    let reconciler = Arc::new(LoadBalancer {
        api: Arc::clone(&api),
        services,
        pools,
        cache: cache.clone(),
        queue: Arc::clone(&queue),
        allocations: Mutex::new(allocations),
    });
    let changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |svc: &Value| queue.add(cache.key_of(svc))
    };
    tokio::join!(
        runtime::reflect(Arc::clone(&api), cache.clone(), changed, shutdown.clone()),
        runtime::resync(cache, Arc::clone(&queue), RESYNC, shutdown.clone()),
        // One at a time: allocation is serialised anyway (the lock), and reconciles are cheap.
        runtime::process(reconciler, queue, 1, shutdown),
    );
}

/// Every Service, in all namespaces, read from the store.
async fn list_all(api: &Api, services: &'static ResourceType) -> Result<Vec<Value>> {
    let target = Target {
        resource: services,
        namespace: None,
        name: None,
        subresource: None,
    };
    let mut listing = objects::list(api, &target, &Default::default())
        .await
        .map_err(|e| Error::api("listing services", &e))?;
    Ok(listing["items"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default())
}

struct LoadBalancer {
    api: Arc<Api>,
    services: &'static ResourceType,
    pools: Vec<Pool>,
    cache: Cache,
    queue: Arc<Queue>,
    /// Held for a whole reconcile: allocation is serialised.
    allocations: Mutex<Allocations>,
}

impl fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancer")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl LoadBalancer {
    /// Looks again at every managed Service still without an address: one was just freed.
    fn wake_waiting(&self) {
        for svc in self.cache.all() {
            if managed(&svc) && !has_ingress(&svc) {
                self.queue.add(self.cache.key_of(&svc));
            }
        }
    }

    async fn set_ingress(&self, svc: &Value, ingress: Value) -> Result<()> {
        let status = status_with(svc, ingress);
        put_status(&self.api, self.services, svc, status, Pin::Latest).await
    }
}

#[async_trait::async_trait]
impl Reconciler for LoadBalancer {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let mut allocations = self.allocations.lock().await;
        let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
        // From the store, not the cache: the status written last time must be seen.
        let Some(svc) = get_fresh(&self.api, self.services, key).await? else {
            allocations
                .reported
                .remove(&(namespace.into(), name.into()));
            if allocations.release(namespace, name, &[]) {
                self.wake_waiting();
            }
            return Ok(Action::Done);
        };
        if !managed(&svc) {
            allocations
                .reported
                .remove(&(namespace.into(), name.into()));
            if allocations.release(namespace, name, &[]) {
                self.wake_waiting();
            }
            // A Service that is no LoadBalancer any more loses its address; one with a class
            // is another implementation's, status included.
            if svc["spec"]["type"] != "LoadBalancer" && has_ingress(&svc) {
                self.set_ingress(&svc, json!([])).await?;
            }
            return Ok(Action::Done);
        }
        match decide(&svc, &self.pools, &allocations) {
            Decision::Assign { ips, replaced } => {
                let holder = Holder::of(&svc);
                let freed = allocations.release(namespace, name, &ips);
                for ip in &ips {
                    allocations.claim(*ip, holder.clone());
                }
                allocations
                    .reported
                    .remove(&(namespace.into(), name.into()));
                if freed {
                    self.wake_waiting();
                }
                let want = ingress(&ips);
                if svc["status"]["loadBalancer"]["ingress"] != want {
                    self.set_ingress(&svc, want).await?;
                    let listed = ips
                        .iter()
                        .map(|ip| format!("\"{ip}\""))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let mut message = format!("Assigned IP [{listed}]");
                    if !replaced.is_empty() {
                        message.push_str(&format!(
                            " in place of {} (not in the address pools, or allocated to another service)",
                            replaced.join(", ")
                        ));
                    }
                    record_event(
                        &self.api,
                        COMPONENT,
                        &svc,
                        ("v1", "Service"),
                        "IPAllocated",
                        &message,
                    )
                    .await;
                }
            }
            Decision::Fail(reason) => {
                let freed = allocations.release(namespace, name, &[]);
                let message = format!("Failed to allocate IP for \"{namespace}/{name}\": {reason}");
                let new = allocations
                    .reported
                    .insert((namespace.into(), name.into()), message.clone())
                    .is_none_or(|last| last != message);
                if freed {
                    self.wake_waiting();
                }
                if has_ingress(&svc) {
                    self.set_ingress(&svc, json!([])).await?;
                }
                if new {
                    record_warning(
                        &self.api,
                        COMPONENT,
                        &svc,
                        ("v1", "Service"),
                        "AllocationFailed",
                        &message,
                    )
                    .await;
                }
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(cidrs: &[&str]) -> Vec<Pool> {
        cidrs.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn svc(name: &str, uid: &str) -> Value {
        json!({
            "metadata": { "name": name, "namespace": "default", "uid": uid },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80 }] },
        })
    }

    fn with_status(mut svc: Value, ips: &[&str]) -> Value {
        let ips: Vec<Ipv4Addr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        svc["status"] = status_with(&svc, ingress(&ips));
        svc
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn assigned(decision: Decision) -> Vec<Ipv4Addr> {
        match decision {
            Decision::Assign { ips, .. } => ips,
            Decision::Fail(reason) => panic!("failed: {reason}"),
        }
    }

    fn failed(decision: Decision) -> String {
        match decision {
            Decision::Fail(reason) => reason,
            Decision::Assign { ips, .. } => panic!("assigned {ips:?}"),
        }
    }

    #[test]
    fn pools_parse_and_skip_network_and_broadcast() {
        let pool: Pool = "10.123.64.0/30".parse().unwrap();
        assert_eq!(pool.to_string(), "10.123.64.0/30");
        assert!(!pool.contains(ip("10.123.64.0")));
        assert!(pool.contains(ip("10.123.64.1")));
        assert!(pool.contains(ip("10.123.64.2")));
        assert!(!pool.contains(ip("10.123.64.3")));
        let single: Pool = "192.0.2.7/32".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        let pair: Pool = "192.0.2.8/31".parse().unwrap();
        assert!(pair.contains(ip("192.0.2.8")) && pair.contains(ip("192.0.2.9")));
        for bad in ["10.0.0.1/24", "10.0.0.0", "10.0.0.0/33", "fd00::/64", "x/8"] {
            assert!(bad.parse::<Pool>().is_err(), "{bad} parsed");
        }
        let services = [("service network", "10.96.0.0/12".parse().unwrap())];
        assert!(check_pools(&pools(&["10.0.0.0/24", "10.0.1.0/24"]), &services).is_ok());
        let overlap = check_pools(&pools(&["10.0.0.0/16", "10.0.3.0/24"]), &[]).unwrap_err();
        assert_eq!(overlap, "the pools 10.0.0.0/16 and 10.0.3.0/24 overlap");
        let reserved = check_pools(&pools(&["10.100.0.0/24"]), &services).unwrap_err();
        assert_eq!(
            reserved,
            "the pool 10.100.0.0/24 overlaps the service network 10.96.0.0/12"
        );
    }

    #[test]
    fn lowest_free_address_across_pools() {
        let pools = pools(&["10.0.0.0/30", "10.0.1.0/24"]);
        let mut allocations = Allocations::default();
        assert_eq!(
            assigned(decide(&svc("a", "1"), &pools, &allocations)),
            [ip("10.0.0.1")]
        );
        allocations.claim(ip("10.0.0.1"), Holder::of(&svc("a", "1")));
        assert_eq!(
            assigned(decide(&svc("b", "2"), &pools, &allocations)),
            [ip("10.0.0.2")]
        );
        allocations.claim(ip("10.0.0.2"), Holder::of(&svc("b", "2")));
        // The first pool is full: the second one's first host address.
        assert_eq!(
            assigned(decide(&svc("c", "3"), &pools, &allocations)),
            [ip("10.0.1.1")]
        );
        // A Service keeps what its status says.
        let a = with_status(svc("a", "1"), &["10.0.0.1"]);
        assert_eq!(assigned(decide(&a, &pools, &allocations)), [ip("10.0.0.1")]);
    }

    #[test]
    fn exhaustion_fails_with_the_pools_named() {
        let pools = pools(&["10.0.0.0/30"]);
        let mut allocations = Allocations::default();
        allocations.claim(ip("10.0.0.1"), Holder::of(&svc("a", "1")));
        allocations.claim(ip("10.0.0.2"), Holder::of(&svc("b", "2")));
        assert_eq!(
            failed(decide(&svc("c", "3"), &pools, &allocations)),
            "no available IPs in the address pools (10.0.0.0/30)"
        );
    }

    #[test]
    fn requested_addresses_must_be_in_a_pool_and_free() {
        let pools = pools(&["10.0.0.0/24"]);
        let mut allocations = Allocations::default();
        allocations.claim(ip("10.0.0.1"), Holder::of(&svc("a", "1")));
        let mut b = svc("b", "2");
        b["spec"]["loadBalancerIP"] = json!("10.0.0.9");
        assert_eq!(assigned(decide(&b, &pools, &allocations)), [ip("10.0.0.9")]);
        b["spec"]["loadBalancerIP"] = json!("10.0.0.1");
        assert_eq!(
            failed(decide(&b, &pools, &allocations)),
            "10.0.0.1 is already allocated to \"default/a\""
        );
        b["spec"]["loadBalancerIP"] = json!("10.0.0.255");
        assert_eq!(
            failed(decide(&b, &pools, &allocations)),
            "10.0.0.255 is not in any address pool (10.0.0.0/24)"
        );
        b["spec"]["loadBalancerIP"] = json!("");
        b["metadata"]["annotations"] = json!({ IPS_ANNOTATION: "10.0.0.7, 10.0.0.8,10.0.0.7" });
        assert_eq!(
            assigned(decide(&b, &pools, &allocations)),
            [ip("10.0.0.7"), ip("10.0.0.8")]
        );
        b["metadata"]["annotations"] = json!({ IPS_ANNOTATION: "10.0.0.7,nope" });
        assert_eq!(
            failed(decide(&b, &pools, &allocations)),
            "\"nope\" is not an IPv4 address"
        );
        // The holder itself may ask for what it has.
        let mut a = svc("a", "1");
        a["spec"]["loadBalancerIP"] = json!("10.0.0.1");
        assert_eq!(assigned(decide(&a, &pools, &allocations)), [ip("10.0.0.1")]);
        // A new object of the same name does not inherit the old one's claim.
        let mut a2 = svc("a", "other-uid");
        a2["spec"]["loadBalancerIP"] = json!("10.0.0.1");
        assert!(failed(decide(&a2, &pools, &allocations)).contains("already allocated"));
    }

    #[test]
    fn an_address_outside_the_pools_is_replaced() {
        let pools = pools(&["10.0.1.0/24"]);
        let a = with_status(svc("a", "1"), &["10.0.0.1"]);
        let allocations = rebuild(std::slice::from_ref(&a), &pools);
        assert!(allocations.by_ip.is_empty());
        assert_eq!(
            decide(&a, &pools, &allocations),
            Decision::Assign {
                ips: vec![ip("10.0.1.1")],
                replaced: vec!["10.0.0.1".into()],
            }
        );
    }

    #[test]
    fn rebuild_gives_a_doubly_claimed_address_to_the_older_service() {
        let pools = pools(&["10.0.0.0/24"]);
        let mut old = with_status(svc("z-old", "1"), &["10.0.0.5"]);
        old["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        let mut young = with_status(svc("a-young", "2"), &["10.0.0.5"]);
        young["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
        let mut classy = with_status(svc("classy", "3"), &["10.0.0.6"]);
        classy["spec"]["loadBalancerClass"] = json!("example.com/other");
        let allocations = rebuild(&[young.clone(), old.clone(), classy], &pools);
        assert_eq!(allocations.by_ip.len(), 1, "{allocations:?}");
        assert_eq!(allocations.by_ip[&ip("10.0.0.5")][0].owner.name, "z-old");
        assert_eq!(
            assigned(decide(&old, &pools, &allocations)),
            [ip("10.0.0.5")]
        );
        // The younger one moves to the lowest free address.
        assert_eq!(
            decide(&young, &pools, &allocations),
            Decision::Assign {
                ips: vec![ip("10.0.0.1")],
                replaced: vec!["10.0.0.5".into()],
            }
        );
    }

    #[test]
    fn services_with_one_sharing_key_and_no_common_port_share_an_address() {
        let pools = pools(&["10.0.0.0/24"]);
        let shared = |name: &str, port: i64, protocol: &str, key: &str| {
            let mut s = svc(name, name);
            s["spec"]["ports"] = json!([{ "port": port, "protocol": protocol }]);
            s["metadata"]["annotations"] = json!({ SHARING_KEY_ANNOTATION: key });
            s
        };
        let mut allocations = Allocations::default();
        // Without a key an address is never shared.
        allocations.claim(ip("10.0.0.1"), Holder::of(&svc("plain", "0")));
        let http = shared("http", 80, "TCP", "web");
        assert_eq!(
            assigned(decide(&http, &pools, &allocations)),
            [ip("10.0.0.2")]
        );
        allocations.claim(ip("10.0.0.2"), Holder::of(&http));
        let https = shared("https", 443, "TCP", "web");
        assert_eq!(
            assigned(decide(&https, &pools, &allocations)),
            [ip("10.0.0.2")]
        );
        allocations.claim(ip("10.0.0.2"), Holder::of(&https));
        // The same port number with another protocol is another port.
        let quic = shared("quic", 443, "UDP", "web");
        assert_eq!(
            assigned(decide(&quic, &pools, &allocations)),
            [ip("10.0.0.2")]
        );
        // A port in common, or another key: the next free address.
        let again = shared("again", 80, "TCP", "web");
        assert_eq!(
            assigned(decide(&again, &pools, &allocations)),
            [ip("10.0.0.3")]
        );
        let other = shared("other", 8080, "TCP", "mail");
        assert_eq!(
            assigned(decide(&other, &pools, &allocations)),
            [ip("10.0.0.3")]
        );
        let mut asks = again.clone();
        asks["spec"]["loadBalancerIP"] = json!("10.0.0.2");
        assert_eq!(
            failed(decide(&asks, &pools, &allocations)),
            "10.0.0.2 is already allocated to \"default/http\""
        );
        // One sharer going leaves the address to the other.
        assert!(allocations.release("default", "http", &[]));
        assert_eq!(allocations.by_ip[&ip("10.0.0.2")].len(), 1);
        assert_eq!(
            assigned(decide(&asks, &pools, &allocations)),
            [ip("10.0.0.2")]
        );
        assert!(allocations.release("default", "https", &[]));
        assert!(!allocations.by_ip.contains_key(&ip("10.0.0.2")));
    }

    #[test]
    fn classes_and_other_types_are_not_managed() {
        let mut s = svc("a", "1");
        assert!(managed(&s));
        s["spec"]["loadBalancerClass"] = json!("example.com/lb");
        assert!(!managed(&s));
        s["spec"]["loadBalancerClass"] = Value::Null;
        s["spec"]["type"] = json!("ClusterIP");
        assert!(!managed(&s));
    }

    #[test]
    fn status_keeps_other_fields() {
        let mut s = svc("a", "1");
        s["status"] = json!({ "conditions": [{ "type": "X" }], "loadBalancer": {} });
        let status = status_with(&s, ingress(&[ip("10.0.0.1")]));
        assert_eq!(
            status,
            json!({
                "conditions": [{ "type": "X" }],
                "loadBalancer": { "ingress": [{ "ip": "10.0.0.1", "ipMode": "VIP" }] },
            })
        );
        assert_eq!(status_with(&s, json!([]))["loadBalancer"], json!({}));
    }
}
