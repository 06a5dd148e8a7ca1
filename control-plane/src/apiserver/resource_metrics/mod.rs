//! `metrics.k8s.io/v1beta1`, served as metrics-server serves it, so that `kubectl top` and the
//! HorizontalPodAutoscaler work without installing it: the API server scrapes every node agent's
//! resource metrics ([`scrape`]), keeps the last two samples of each node and container
//! ([`window`]), and answers `NodeMetrics` and `PodMetrics` with the CPU rate between them and
//! the latest working set. Every control plane scrapes for itself (as metrics-server replicas
//! do): there is nothing to elect and nothing stored.

pub mod scrape;
pub mod window;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
};

use apiary_api::quantity::Quantity;
use axum::{
    http::{HeaderMap, Method, header},
    response::{IntoResponse as _, Response},
};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use self::window::{NodeSeries, Scrape, Usage};
use super::{Api, error::ApiError, objects, path::Target, tables};

/// What the last scrapes of every node said.
#[derive(Debug, Default)]
pub struct ResourceMetrics {
    nodes: RwLock<HashMap<String, NodeSeries>>,
}

impl ResourceMetrics {
    /// Takes one round of scrapes; nodes no longer in `nodes` are forgotten, nodes that did not
    /// answer keep what they said before (a rate needs two samples: one missed scrape must not
    /// cost two rounds).
    pub fn record(
        &self,
        nodes: &HashSet<String>,
        scrapes: impl IntoIterator<Item = (String, Scrape)>,
    ) {
        let mut known = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        known.retain(|name, _| nodes.contains(name));
        for (name, scrape) in scrapes {
            known.entry(name).or_default().push(scrape);
        }
    }

    fn node(&self, name: &str) -> Option<Usage> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(name)?.node.as_ref()?.usage()
    }

    /// The usage of each container of pod `namespace/pod` on `node`, by container name; `None`
    /// unless every container the agent reported has a rate (metrics-server's rule: a partial
    /// pod would under-report).
    pub fn pod(&self, node: &str, namespace: &str, pod: &str) -> Option<BTreeMap<String, Usage>> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut containers = BTreeMap::new();
        for (key, series) in &nodes.get(node)?.containers {
            if key.namespace == namespace && key.pod == pod {
                containers.insert(key.container.clone(), series.usage()?);
            }
        }
        (!containers.is_empty()).then_some(containers)
    }
}

/// A `metrics.k8s.io` request: `get` and `list` of `nodes` and `pods`, with label and field
/// selectors over the nodes and pods they measure.
pub async fn serve(
    api: &Arc<Api>,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let verb = if target.name.is_some() { "get" } else { "list" };
    let watch = query.get("watch").is_some_and(|w| w == "1" || w == "true");
    if *method != Method::GET || watch || target.subresource.is_some() {
        let verb = if watch { "watch" } else { verb };
        return Err(ApiError::method_not_allowed(
            if *method == Method::GET {
                verb
            } else {
                method.as_str()
            },
            target.resource.plural,
        ));
    }
    let measured = match target.resource.kind {
        "NodeMetrics" => api.resources.get("", "v1", "nodes"),
        _ => api.resources.get("", "v1", "pods"),
    }
    .expect("nodes and pods are served");
    let source = Target {
        resource: measured,
        namespace: target.namespace.clone(),
        name: None,
        subresource: None,
    };
    let items: Vec<Value> = match &target.name {
        Some(name) => {
            let object = objects::get(api, measured, target.namespace.as_deref(), name)
                .await
                .map_err(|_| not_found(target, name))?;
            vec![object]
        }
        None => {
            let mut selectors = HashMap::new();
            for key in ["labelSelector", "fieldSelector"] {
                if let Some(value) = query.get(key) {
                    selectors.insert(key.to_owned(), value.clone());
                }
            }
            let list = objects::list(api, &source, &selectors).await?;
            list["items"].as_array().cloned().unwrap_or_default()
        }
    };
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let metrics: Vec<Value> = items
        .iter()
        .filter_map(|object| match target.resource.kind {
            "NodeMetrics" => node_metrics(&api.resource_metrics, object, &now),
            _ => pod_metrics(&api.resource_metrics, object, &now),
        })
        .collect();
    let resource = target.resource;
    if let Some(name) = &target.name {
        let Some(found) = metrics.into_iter().next() else {
            return Err(not_found(target, name));
        };
        return Ok(axum::Json(found).into_response());
    }
    let wants_table = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(tables::wanted);
    if wants_table {
        return Ok(axum::Json(tables::table(resource, &metrics, json!({}))).into_response());
    }
    Ok(axum::Json(json!({
        "kind": resource.list_kind(),
        "apiVersion": resource.api_version(),
        "metadata": {},
        "items": metrics,
    }))
    .into_response())
}

/// metrics-server's answer for an object it has no metrics of: the metrics resource's NotFound.
fn not_found(target: &Target, name: &str) -> ApiError {
    ApiError::not_found(target.resource.plural, target.resource.group, name)
}

fn node_metrics(metrics: &ResourceMetrics, node: &Value, now: &str) -> Option<Value> {
    let name = node["metadata"]["name"].as_str()?;
    let usage = metrics.node(name)?;
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata(node, now),
        "timestamp": timestamp(&usage),
        "window": apiary_api::protobuf::go_duration(usage.window_nanos),
        "usage": usage_of(&usage),
    }))
}

fn pod_metrics(metrics: &ResourceMetrics, pod: &Value, now: &str) -> Option<Value> {
    let node = pod["spec"]["nodeName"].as_str()?;
    let namespace = pod["metadata"]["namespace"].as_str()?;
    let name = pod["metadata"]["name"].as_str()?;
    let containers = metrics.pod(node, namespace, name)?;
    // The pod's time and window are its newest container's, as metrics-server reports them.
    let newest = containers.values().max_by_key(|u| u.timestamp)?;
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata(pod, now),
        "timestamp": timestamp(newest),
        "window": apiary_api::protobuf::go_duration(newest.window_nanos),
        "containers": containers
            .iter()
            .map(|(name, usage)| json!({"name": name, "usage": usage_of(usage)}))
            .collect::<Vec<_>>(),
    }))
}

/// The measured object's name, namespace and labels; created now, as metrics-server has it.
fn metadata(object: &Value, now: &str) -> Value {
    let mut metadata = json!({
        "name": object["metadata"]["name"],
        "creationTimestamp": now,
    });
    if let Some(namespace) = object["metadata"]["namespace"].as_str() {
        metadata["namespace"] = json!(namespace);
    }
    if let Some(labels) = object["metadata"]["labels"].as_object() {
        metadata["labels"] = Value::Object(labels.clone());
    }
    metadata
}

fn timestamp(usage: &Usage) -> String {
    usage.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn usage_of(usage: &Usage) -> Value {
    json!({
        "cpu": Quantity::from_nano(usage.nanocores),
        "memory": Quantity::from_bytes(usage.memory_bytes),
    })
}

/// The sum of a PodMetrics' containers' usage, in nanocores and bytes (its table row).
pub fn pod_totals(pod_metrics: &Value) -> (i64, i64) {
    let containers = pod_metrics["containers"].as_array();
    containers
        .into_iter()
        .flatten()
        .fold((0, 0), |(cpu, memory), c| {
            let quantity = |v: &Value| Quantity(v.as_str().unwrap_or("0").to_owned());
            let nano = quantity(&c["usage"]["cpu"])
                .milli_value()
                .map_or(0, |m| m.saturating_mul(1_000_000));
            let bytes = quantity(&c["usage"]["memory"]).value().unwrap_or(0);
            (cpu + nano, memory + bytes)
        })
}
