//! The node lifecycle controller: a node whose Lease (`kube-node-lease/<node>`) stops being
//! renewed becomes `Ready=Unknown` and is tainted `node.kubernetes.io/unreachable:NoExecute`;
//! its pods that do not tolerate the taint are evicted once their toleration runs out; when
//! heartbeats resume, the taint goes and the node is Ready again.
//!
//! Staleness is measured by when this controller *saw* a renewal change, not by the renew time
//! itself, so that clock skew and a control-plane restart never count against a node.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use apiary_api::core_v1::{Pod, Taint};
use serde_json::{Value, json};

use tokio::sync::watch;

use super::{now, record_event_from, resource};
use crate::{
    apiserver::{Api, error::ApiError, objects, path::Target},
    controllers::runtime::{self, Cache},
};

/// The taint of a node that stopped posting status.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// How often nodes are looked at: an eighth of the grace, between these bounds (Kubernetes'
/// nodeMonitorPeriod is 5 s for a 40 s grace). With thousands of nodes a pass is not free.
const TICK: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
const MERGE_PATCH: &str = "application/merge-patch+json";

/// Timings of the controller.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long a Lease may go unrenewed before the node is NotReady (Kubernetes: 40 s).
    pub grace: Duration,
    /// How long pods without their own toleration of the unreachable taint stay (Kubernetes'
    /// DefaultTolerationSeconds: 300 s).
    pub default_eviction: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(40),
            default_eviction: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Node → (last renew time seen, when it was seen to change).
    renewals: HashMap<String, (String, Instant)>,
    /// Node → when it was (seen) tainted unreachable.
    tainted_since: HashMap<String, Instant>,
}

/// Runs the controller until the process ends (or the task is aborted).
///
/// Nodes and Leases come from watch-fed caches: listing both from the store every tick cost
/// 10,000 decodes per half second with 5,000 nodes.
pub async fn run(api: Arc<Api>, config: Config) {
    let leases = Cache::new(resource(&api, "coordination.k8s.io", "leases"));
    let nodes = Cache::new(resource(&api, "", "nodes"));
    // Never stopped: the reflectors end with this future.
    let (_running, shutdown) = watch::channel(false);
    let reflectors = async {
        tokio::join!(
            runtime::reflect(Arc::clone(&api), leases.clone(), |_| {}, shutdown.clone()),
            runtime::reflect(Arc::clone(&api), nodes.clone(), |_| {}, shutdown.clone()),
        )
    };
    let ticks = async {
        let mut state = State::default();
        let mut tick = tokio::time::interval((config.grace / 8).clamp(TICK.0, TICK.1));
        loop {
            tick.tick().await;
            if !leases.is_synced() || !nodes.is_synced() {
                continue;
            }
            if let Err(e) = reconcile(&api, &config, &mut state, &leases, &nodes).await {
                tracing::warn!(error = %e.message, "node lifecycle");
            }
        }
    };
    tokio::join!(reflectors, ticks);
}

fn list_target(
    resource: &'static crate::apiserver::resources::ResourceType,
    ns: Option<&str>,
) -> Target {
    Target {
        resource,
        namespace: ns.map(str::to_owned),
        name: None,
        subresource: None,
    }
}

fn items(listing: Value) -> Vec<Value> {
    match listing {
        Value::Object(mut o) => match o.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

async fn reconcile(
    api: &Arc<Api>,
    config: &Config,
    state: &mut State,
    leases: &Cache,
    nodes: &Cache,
) -> Result<(), ApiError> {
    let lease_list = leases.list("kube-node-lease");
    let node_list = nodes.all();
    let now_i = Instant::now();
    let renew_times: HashMap<&str, &str> = lease_list
        .iter()
        .filter_map(|l| {
            Some((
                l["metadata"]["name"].as_str()?,
                l["spec"]["renewTime"].as_str().unwrap_or_default(),
            ))
        })
        .collect();
    let mut unreachable = HashSet::new();
    let names: HashSet<String> = node_list
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    state.renewals.retain(|n, _| names.contains(n));
    state.tainted_since.retain(|n, _| names.contains(n));
    for node in &node_list {
        let Some(name) = node["metadata"]["name"].as_str() else {
            continue;
        };
        let renew = renew_times.get(name).copied().unwrap_or_default();
        let seen = state
            .renewals
            .entry(name.to_owned())
            .or_insert_with(|| (renew.to_owned(), now_i));
        if seen.0 != renew {
            *seen = (renew.to_owned(), now_i);
        }
        let stale = now_i.duration_since(seen.1) > config.grace;
        let effects: Vec<&str> = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["key"] == UNREACHABLE)
            .filter_map(|t| t["effect"].as_str())
            .collect();
        let tainted = !effects.is_empty();
        let fully_tainted = effects.contains(&"NoSchedule") && effects.contains(&"NoExecute");
        let ready = ready_status(node);
        if stale {
            if ready != "Unknown" {
                tracing::info!(node = name, "lease expired: node status unknown");
                set_ready(
                    api,
                    name,
                    ReadyCondition {
                        status: "Unknown",
                        reason: "NodeStatusUnknown",
                        message: "Kubelet stopped posting node status.",
                    },
                    None,
                )
                .await?;
            }
            if !fully_tainted {
                set_unreachable_taint(api, node, true).await?;
            }
            state.tainted_since.entry(name.to_owned()).or_insert(now_i);
            unreachable.insert(name.to_owned());
        } else {
            if tainted {
                tracing::info!(
                    node = name,
                    "heartbeats resumed: removing the unreachable taint"
                );
                set_unreachable_taint(api, node, false).await?;
            }
            if ready == "Unknown" {
                // Only if it is still Unknown: an agent that posts its own condition may have
                // said NotReady with the heartbeat that resumed (and this cache lag behind).
                set_ready(
                    api,
                    name,
                    ReadyCondition {
                        status: "True",
                        reason: "KubeletReady",
                        message: "apiary node agent is posting ready status",
                    },
                    Some("Unknown"),
                )
                .await?;
            }
            state.tainted_since.remove(name);
        }
    }
    if !unreachable.is_empty() {
        let pods = resource(api, "", "pods");
        let listing = items(objects::list(api, &list_target(pods, None), &HashMap::new()).await?);
        mark_pods_not_ready(api, &listing, &unreachable).await;
        evict(api, config, state, &unreachable, listing).await?;
    }
    Ok(())
}

/// Sets the Ready condition of the pods of unreachable nodes to False, as Kubernetes'
/// MarkPodsNotReady: nobody can vouch for them, so Services stop sending them traffic within
/// the node grace rather than at their eviction. Their agent reports the truth again once it is
/// back. A failed write is tried again at the next pass.
async fn mark_pods_not_ready(api: &Arc<Api>, pods: &[Value], unreachable: &HashSet<String>) {
    let resource = resource(api, "", "pods");
    for pod in pods {
        let on_unreachable = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| unreachable.contains(n));
        if !on_unreachable || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let mut pod = pod.clone();
        let Some(ready) = pod["status"]["conditions"]
            .as_array_mut()
            .and_then(|c| c.iter_mut().find(|c| c["type"] == "Ready"))
        else {
            continue;
        };
        if ready["status"] != "True" {
            continue;
        }
        ready["status"] = json!("False");
        ready["lastTransitionTime"] = json!(now());
        let (Some(namespace), Some(name)) = (
            pod["metadata"]["namespace"].as_str().map(str::to_owned),
            pod["metadata"]["name"].as_str().map(str::to_owned),
        ) else {
            continue;
        };
        let target = Target {
            resource,
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            subresource: Some("status".into()),
        };
        match objects::update(api, &target, &name, pod).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), "node unreachable: pod not ready")
            }
            Err(e) => {
                tracing::debug!(pod = %format!("{namespace}/{name}"), error = %e.message, "marking a pod not ready")
            }
        }
    }
}

fn ready_status(node: &Value) -> String {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_owned()
}

/// A node's Ready condition, as written by [`set_ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadyCondition<'a> {
    /// `True`, `False` or `Unknown`.
    pub status: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
}

/// Writes `node`'s Ready condition unless it already says `ready`, and only while its status
/// is `only_from` when that is given. The transition time moves only when the status changes,
/// as Kubernetes' does.
pub(crate) async fn set_ready(
    api: &Arc<Api>,
    name: &str,
    ready: ReadyCondition<'_>,
    only_from: Option<&str>,
) -> Result<(), ApiError> {
    let nodes = resource(api, "", "nodes");
    let current = objects::get(api, nodes, None, name).await?;
    let now = now();
    let mut conditions: Vec<Value> = current["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let existing = conditions.iter_mut().find(|c| c["type"] == "Ready");
    let status_now = existing
        .as_ref()
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown");
    if only_from.is_some_and(|from| from != status_now) {
        return Ok(());
    }
    match existing {
        Some(c) => {
            if c["status"] == ready.status
                && c["reason"] == ready.reason
                && c["message"] == ready.message
            {
                return Ok(());
            }
            if c["status"] != ready.status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(ready.status);
            c["reason"] = json!(ready.reason);
            c["message"] = json!(ready.message);
            c["lastHeartbeatTime"] = json!(now);
        }
        None => conditions.push(json!({
            "type": "Ready", "status": ready.status, "reason": ready.reason,
            "message": ready.message, "lastHeartbeatTime": now, "lastTransitionTime": now,
        })),
    }
    let patch = json!({ "status": { "conditions": conditions } });
    let target = Target {
        resource: nodes,
        namespace: None,
        name: Some(name.to_owned()),
        subresource: Some("status".into()),
    };
    objects::patch(
        api,
        &target,
        name,
        MERGE_PATCH,
        patch.to_string().as_bytes(),
    )
    .await?;
    Ok(())
}

async fn set_unreachable_taint(
    api: &Arc<Api>,
    node: &Value,
    present: bool,
) -> Result<(), ApiError> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["key"] != UNREACHABLE)
        .collect();
    if present {
        // NoSchedule too (Kubernetes' TaintNodesByCondition): a pod that tolerates the
        // NoExecute taint for a while must still not be placed there.
        taints.push(json!({ "key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": now() }));
        taints.push(json!({ "key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now() }));
    }
    let patch = json!({ "spec": { "taints": if taints.is_empty() { Value::Null } else { json!(taints) } } });
    let target = Target {
        resource: resource(api, "", "nodes"),
        namespace: None,
        name: Some(name.to_owned()),
        subresource: None,
    };
    objects::patch(
        api,
        &target,
        name,
        MERGE_PATCH,
        patch.to_string().as_bytes(),
    )
    .await?;
    Ok(())
}

/// Deletes the pods of unreachable nodes whose toleration of the taint has run out.
async fn evict(
    api: &Arc<Api>,
    config: &Config,
    state: &State,
    unreachable: &HashSet<String>,
    listing: Vec<Value>,
) -> Result<(), ApiError> {
    let pods = resource(api, "", "pods");
    let taint = Taint {
        key: UNREACHABLE.into(),
        effect: "NoExecute".into(),
        ..Taint::default()
    };
    for object in listing {
        let node = object["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !unreachable.contains(&node) || object["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Ok(pod) = apiary_api::meta::from_json::<Pod>(object) else {
            continue;
        };
        let tolerations: Vec<_> = pod
            .spec
            .tolerations
            .iter()
            .filter(|t| t.tolerates(&taint))
            .collect();
        // Without a toleration of its own, a pod gets the default one (as the
        // DefaultTolerationSeconds admission plugin adds); one without a limit stays forever.
        let allowed = if tolerations.is_empty() {
            Some(config.default_eviction)
        } else if tolerations.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            tolerations
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
        };
        let Some(allowed) = allowed else { continue };
        let since = state
            .tainted_since
            .get(&node)
            .copied()
            .unwrap_or_else(Instant::now);
        if since.elapsed() < allowed {
            continue;
        }
        let (ns, name) = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        tracing::info!(pod = %format!("{ns}/{name}"), %node, "evicting from an unreachable node");
        let target = Target {
            resource: pods,
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            subresource: None,
        };
        // No agent will finish a graceful deletion on a node that cannot be reached: delete
        // at once, so that controllers replace the pod elsewhere.
        let options =
            json!({ "gracePeriodSeconds": 0, "preconditions": { "uid": pod.metadata.uid } });
        match objects::delete(api, &target, &name, &options).await {
            Ok(_) => {
                record_event_from(
                    api,
                    &pod,
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{name}"),
                    "taint-eviction-controller",
                )
                .await;
            }
            Err(e) if e.reason == "NotFound" || e.reason == "Conflict" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
