//! The scraper: every resolution interval, each node agent's `/metrics/resource` (the kubelet's
//! resource metrics endpoint, which metrics-server scrapes), read through the API server's own
//! client certificate as `nodes/proxy` reads it, decoded into [`Scrape`]s.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use axum::body::Body;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt as _;
use prometheus_parse::Value as Sample;

use super::{
    ResourceMetrics,
    window::{ContainerKey, Point, Scrape},
};
use crate::apiserver::{Api, objects, path::Target, streams::AgentEndpoint};

/// metrics-server's default `--metric-resolution`.
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(15);
/// The most of an agent's answer read: the resource metrics of 110 pods are a few tens of KiB.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Scrapes every node every `resolution`, for ever.
pub async fn run(api: Arc<Api>, resolution: Duration) {
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // An agent that answers late must not hold up the others, nor the next round.
        let timeout = resolution.mul_f64(0.9);
        if let Err(e) = scrape_all(&api, &api.resource_metrics, timeout).await {
            tracing::warn!(error = %e.message, "listing nodes to scrape");
        }
    }
}

async fn scrape_all(
    api: &Arc<Api>,
    metrics: &ResourceMetrics,
    timeout: Duration,
) -> Result<(), crate::apiserver::error::ApiError> {
    let nodes = api
        .resources
        .get("", "v1", "nodes")
        .expect("nodes are served");
    let target = Target {
        resource: nodes,
        namespace: None,
        name: None,
        subresource: None,
    };
    let mut list = objects::list(api, &target, &HashMap::new()).await?;
    let nodes = list["items"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let names: HashSet<String> = nodes
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let scrapes = futures::future::join_all(nodes.iter().map(|node| async move {
        let name = node["metadata"]["name"].as_str()?.to_owned();
        let agent = AgentEndpoint::of(node)?;
        match tokio::time::timeout(timeout, scrape_one(api, &agent)).await {
            Ok(Ok(scrape)) => Some((name, scrape)),
            Ok(Err(e)) => {
                tracing::debug!(node = %name, error = %e, "scraping resource metrics");
                None
            }
            Err(_) => {
                tracing::debug!(node = %name, "scraping resource metrics timed out");
                None
            }
        }
    }))
    .await;
    metrics.record(&names, scrapes.into_iter().flatten());
    Ok(())
}

async fn scrape_one(api: &Api, agent: &AgentEndpoint) -> Result<Scrape, String> {
    let request = axum::http::Request::get(agent.uri("/metrics/resource", ""))
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = agent.send(api, request).await.map_err(|e| e.0)?;
    if !response.status().is_success() {
        return Err(format!("the agent answered {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|e| e.to_string())?;
    decode(text, Utc::now())
}

/// The kubelet's resource metrics (`node_cpu_usage_seconds_total`,
/// `container_memory_working_set_bytes`, … with millisecond timestamps) as one [`Scrape`];
/// samples without a timestamp are taken at `now`, as metrics-server takes them.
pub fn decode(text: &str, now: DateTime<Utc>) -> Result<Scrape, String> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse_at(lines, now).map_err(|e| e.to_string())?;
    let mut node_cpu = None;
    let mut node_memory = None;
    #[derive(Default)]
    struct Partial {
        cpu: Option<(f64, DateTime<Utc>)>,
        memory: Option<f64>,
        start: Option<f64>,
    }
    let mut containers: HashMap<ContainerKey, Partial> = HashMap::new();
    for sample in &parsed.samples {
        let value = match sample.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => v,
            _ => continue,
        };
        if !value.is_finite() {
            continue;
        }
        let container = || {
            Some(ContainerKey {
                namespace: sample.labels.get("namespace")?.to_owned(),
                pod: sample.labels.get("pod")?.to_owned(),
                container: sample.labels.get("container")?.to_owned(),
            })
        };
        match sample.metric.as_str() {
            "node_cpu_usage_seconds_total" => node_cpu = Some((value, sample.timestamp)),
            "node_memory_working_set_bytes" => node_memory = Some(value),
            "container_cpu_usage_seconds_total" => {
                if let Some(key) = container() {
                    containers.entry(key).or_default().cpu = Some((value, sample.timestamp));
                }
            }
            "container_memory_working_set_bytes" => {
                if let Some(key) = container() {
                    containers.entry(key).or_default().memory = Some(value);
                }
            }
            "container_start_time_seconds" => {
                if let Some(key) = container() {
                    containers.entry(key).or_default().start = Some(value);
                }
            }
            _ => {}
        }
    }
    let node = match (node_cpu, node_memory) {
        (Some((cpu_seconds, at)), Some(memory_bytes)) => Some(Point {
            cpu_seconds,
            memory_bytes,
            at,
            start: None,
        }),
        _ => None,
    };
    // A container without both figures is left out, as metrics-server leaves it out.
    let containers = containers
        .into_iter()
        .filter_map(|(key, p)| {
            let (cpu_seconds, at) = p.cpu?;
            Some((
                key,
                Point {
                    cpu_seconds,
                    memory_bytes: p.memory?,
                    at,
                    start: p.start,
                },
            ))
        })
        .collect();
    Ok(Scrape { node, containers })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at_millis(millis: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(millis).single().unwrap()
    }

    /// What a kubelet serves (v1.32, `pkg/kubelet/metrics/collectors/resource_metrics.go`).
    const KUBELET: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 12.5 1700000000000
container_cpu_usage_seconds_total{container="side",namespace="default",pod="web"} 0.25 1700000000100
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="app",namespace="default",pod="web"} 1.048576e+07 1700000000000
container_memory_working_set_bytes{container="side",namespace="default",pod="web"} 524288 1700000000100
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="app",namespace="default",pod="web"} 1.6999e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 357.35491 1700000000200
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1.434337280e+09 1700000000200
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="default",pod="web"} 12.75 1700000000100
# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE scrape_error gauge
scrape_error 0
"#;

    #[test]
    fn the_kubelet_s_resource_metrics_decode() {
        let now = at_millis(1_700_000_005_000);
        let scrape = decode(KUBELET, now).unwrap();
        let node = scrape.node.unwrap();
        assert_eq!(node.cpu_seconds, 357.35491);
        assert_eq!(node.memory_bytes, 1_434_337_280.0);
        assert_eq!(node.at, at_millis(1_700_000_000_200));
        let key = |container: &str| ContainerKey {
            namespace: "default".into(),
            pod: "web".into(),
            container: container.into(),
        };
        let app = scrape.containers[&key("app")];
        assert_eq!(app.cpu_seconds, 12.5);
        assert_eq!(app.memory_bytes, 10_485_760.0);
        assert_eq!(app.start, Some(1.6999e9));
        assert_eq!(app.at, at_millis(1_700_000_000_000));
        let side = scrape.containers[&key("side")];
        assert_eq!((side.memory_bytes, side.start), (524_288.0, None));
        assert_eq!(scrape.containers.len(), 2);
    }

    #[test]
    fn samples_without_timestamps_are_taken_at_the_scrape_and_partial_containers_left_out() {
        let now = at_millis(1_700_000_005_000);
        let text = "node_cpu_usage_seconds_total 10\nnode_memory_working_set_bytes 20\n\
            container_cpu_usage_seconds_total{container=\"a\",namespace=\"n\",pod=\"p\"} 1\n";
        let scrape = decode(text, now).unwrap();
        assert_eq!(scrape.node.unwrap().at, now);
        assert!(scrape.containers.is_empty(), "no memory figure: left out");
        assert_eq!(decode("", now).unwrap(), Scrape::default());
    }
}
