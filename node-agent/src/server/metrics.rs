//! `GET /metrics`: the agent's metrics in Prometheus' text format, on `prometheus-client`: the
//! agent's instruments ([`crate::metrics`]), and what is read at scrape time: packets the data
//! plane dropped (`apiary_dataplane_drops_total`: NetworkPolicy's and spoofed sources) by pod,
//! direction and reason, NetworkPolicy's alone (`apiary_policy_drops_total`), pods' traffic
//! (`apiary_pod_network_*_total`, from the collector's last sample of `POD_TRAFFIC`) and the
//! occupancy of the BPF maps that are cheap to count (`apiary_bpf_map_entries`).

use std::{path::Path, sync::Arc};

use apiary_ebpf_common::{
    BACKENDS, BACKENDS_MAX_ENTRIES, DROP_FLOW_TABLE_FULL, DROP_POLICY_DENIED, DROP_SPOOFED,
    DROP_UNPARSABLE, ENDPOINTS, ENDPOINTS_MAX_ENTRIES, POD_TRAFFIC, POD_TRAFFIC_MAX_ENTRIES,
    POLICY_INGRESS, PolicyDropKey, REMOTE_NODES, REMOTE_NODES_MAX_ENTRIES, SERVICES,
    SERVICES_MAX_ENTRIES,
};
use axum::{
    extract::State,
    http::header,
    response::{IntoResponse as _, Response},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{StreamError, flows::FlowNames, trace::PolicyTracer};
use crate::{metrics::AgentMetrics, stats::Latest};

/// What `/metrics` reads at scrape time.
#[derive(Clone, Debug)]
pub struct MetricsSources {
    /// `None`: an agent without policy maps.
    pub tracer: Option<Arc<PolicyTracer>>,
    pub stats: Latest,
}

/// One pod's traffic counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCounters {
    pub namespace: String,
    pub pod: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// What the data plane shows at one scrape, encoded into the registry as it is.
#[derive(Clone, Debug, Default)]
pub struct DataplaneState {
    /// Drops as (pod, direction, reason, packets).
    pub drops: Vec<(String, &'static str, String, u64)>,
    pub pods: Vec<PodCounters>,
    /// Maps as (name, entries, max entries).
    pub maps: Vec<(&'static str, u64, u64)>,
}

impl DataplaneState {
    /// Names the drops' pods by `names` (endpoints no longer known by their id).
    pub fn with_drops(mut self, drops: &[(PolicyDropKey, u64)], names: &FlowNames) -> Self {
        self.drops = drops
            .iter()
            .map(|(key, packets)| {
                let pod = names
                    .endpoints
                    .get(&key.endpoint)
                    .cloned()
                    .unwrap_or_else(|| format!("endpoint:{}", key.endpoint));
                let direction = if key.direction == POLICY_INGRESS {
                    "ingress"
                } else {
                    "egress"
                };
                let reason = match key.reason {
                    DROP_POLICY_DENIED => "policy_denied".to_owned(),
                    DROP_UNPARSABLE => "unparsable".to_owned(),
                    DROP_SPOOFED => "spoofed".to_owned(),
                    DROP_FLOW_TABLE_FULL => "flow_table_full".to_owned(),
                    other => format!("reason_{other}"),
                };
                (pod, direction, reason, *packets)
            })
            .collect();
        self
    }
}

impl Collector for DataplaneState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut dataplane = encoder.encode_descriptor(
            "apiary_dataplane_drops",
            "Packets the data plane dropped, by pod, direction and reason",
            None,
            MetricType::Counter,
        )?;
        for (pod, direction, reason, packets) in &self.drops {
            let labels = [
                ("pod", pod.as_str()),
                ("direction", direction),
                ("reason", reason.as_str()),
            ];
            ConstCounter::new(*packets).encode(dataplane.encode_family(&labels)?)?;
        }
        let mut policy = encoder.encode_descriptor(
            "apiary_policy_drops",
            "Packets dropped by NetworkPolicy, by pod, direction and reason",
            None,
            MetricType::Counter,
        )?;
        // Spoofing is no policy's verdict: only the data plane's family counts it.
        for (pod, direction, reason, packets) in &self.drops {
            if reason != "spoofed" {
                let labels = [
                    ("pod", pod.as_str()),
                    ("direction", direction),
                    ("reason", reason.as_str()),
                ];
                ConstCounter::new(*packets).encode(policy.encode_family(&labels)?)?;
            }
        }
        type Field = fn(&PodCounters) -> u64;
        let traffic: [(&str, &str, Field); 4] = [
            (
                "apiary_pod_network_receive_bytes",
                "Bytes delivered to the pod through its veth",
                |p| p.rx_bytes,
            ),
            (
                "apiary_pod_network_transmit_bytes",
                "Bytes the pod sent through its veth",
                |p| p.tx_bytes,
            ),
            (
                "apiary_pod_network_receive_packets",
                "Packets delivered to the pod through its veth",
                |p| p.rx_packets,
            ),
            (
                "apiary_pod_network_transmit_packets",
                "Packets the pod sent through its veth",
                |p| p.tx_packets,
            ),
        ];
        for (name, help, field) in traffic {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for pod in &self.pods {
                let labels = [
                    ("namespace", pod.namespace.as_str()),
                    ("pod", pod.pod.as_str()),
                ];
                ConstCounter::new(field(pod)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut entries = encoder.encode_descriptor(
            "apiary_bpf_map_entries",
            "Entries in the data plane's BPF maps",
            None,
            MetricType::Gauge,
        )?;
        for (map, count, _) in &self.maps {
            let gauge = ConstGauge::new(i64::try_from(*count).unwrap_or(i64::MAX));
            gauge.encode(entries.encode_family(&[("map", *map)])?)?;
        }
        let mut max = encoder.encode_descriptor(
            "apiary_bpf_map_max_entries",
            "Capacity of the data plane's BPF maps",
            None,
            MetricType::Gauge,
        )?;
        for (map, _, capacity) in &self.maps {
            let gauge = ConstGauge::new(i64::try_from(*capacity).unwrap_or(i64::MAX));
            gauge.encode(max.encode_family(&[("map", *map)])?)?;
        }
        Ok(())
    }
}

/// The exposition of `instruments` and `state`.
pub fn render(instruments: &AgentMetrics, state: DataplaneState) -> String {
    let mut registry = Registry::default();
    instruments.register(&mut registry);
    registry.register_collector(Box::new(state));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The entries of the maps that are small enough to walk on every scrape (not the conntrack
/// and policy tables, whose hundreds of thousands of entries a scrape must not iterate).
fn map_occupancy(pin_dir: &Path) -> crate::dataplane::Result<Vec<(&'static str, u64, u64)>> {
    use crate::dataplane::{EndpointMap, PodTrafficMap, RemoteNodeMap, ServiceMaps};
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let services = ServiceMaps::open(pin_dir)?;
    Ok(vec![
        (
            ENDPOINTS,
            count(EndpointMap::open(pin_dir)?.all()?.len()),
            u64::from(ENDPOINTS_MAX_ENTRIES),
        ),
        (
            POD_TRAFFIC,
            count(PodTrafficMap::open(pin_dir)?.all()?.len()),
            u64::from(POD_TRAFFIC_MAX_ENTRIES),
        ),
        (
            REMOTE_NODES,
            count(RemoteNodeMap::open(pin_dir)?.all()?.len()),
            u64::from(REMOTE_NODES_MAX_ENTRIES),
        ),
        (
            SERVICES,
            count(services.frontends()?.len()),
            u64::from(SERVICES_MAX_ENTRIES),
        ),
        (
            BACKENDS,
            count(services.backends()?.len()),
            u64::from(BACKENDS_MAX_ENTRIES),
        ),
    ])
}

pub(super) async fn handle(State(sources): State<MetricsSources>) -> Response {
    let mut state = DataplaneState {
        pods: sources
            .stats
            .get()
            .map(|s| {
                s.pods
                    .iter()
                    .filter_map(|p| {
                        let n = p.network?;
                        Some(PodCounters {
                            namespace: p.namespace.clone(),
                            pod: p.name.clone(),
                            rx_bytes: n.rx_bytes,
                            tx_bytes: n.tx_bytes,
                            rx_packets: n.rx_packets,
                            tx_packets: n.tx_packets,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ..DataplaneState::default()
    };
    if let Some(tracer) = sources.tracer {
        let pin_dir = tracer.pin_dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::dataplane::Error>((
                crate::dataplane::policy_drops(&pin_dir)?,
                map_occupancy(&pin_dir)?,
            ))
        })
        .await;
        let (drops, maps) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                return StreamError::Internal(
                    anyhow::Error::new(e).context("reading the data plane's maps"),
                )
                .into_response();
            }
            Err(e) => return StreamError::Internal(anyhow::anyhow!("{e}")).into_response(),
        };
        state.maps = maps;
        state = state.with_drops(&drops, &tracer.names.read().expect("flow names lock"));
    }
    let text = render(AgentMetrics::global(), state);
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_ebpf_common::POLICY_EGRESS;
    use std::time::Duration;

    fn key(endpoint: u32, direction: u8, reason: u8) -> PolicyDropKey {
        PolicyDropKey {
            endpoint,
            direction,
            reason,
            pad: [0; 2],
        }
    }

    #[test]
    fn counters_are_labelled_with_pod_direction_and_reason() {
        let mut names = FlowNames::default();
        names.endpoints.insert(7, "x/b".to_owned());
        let state = DataplaneState::default().with_drops(
            &[
                (key(7, POLICY_INGRESS, DROP_POLICY_DENIED), 12),
                (key(9, POLICY_EGRESS, DROP_UNPARSABLE), 1),
                (key(7, POLICY_EGRESS, DROP_SPOOFED), 3),
            ],
            &names,
        );
        let text = render(&AgentMetrics::default(), state);
        assert!(text.contains("# TYPE apiary_policy_drops_total counter\n"));
        assert!(text.contains(
            "apiary_policy_drops_total{pod=\"x/b\",direction=\"ingress\",reason=\"policy_denied\"} 12\n"
        ), "{text}");
        assert!(text.contains(
            "apiary_policy_drops_total{pod=\"endpoint:9\",direction=\"egress\",reason=\"unparsable\"} 1\n"
        ));
        assert!(text.contains("# TYPE apiary_dataplane_drops_total counter\n"));
        assert!(text.contains(
            "apiary_dataplane_drops_total{pod=\"x/b\",direction=\"egress\",reason=\"spoofed\"} 3\n"
        ));
        assert!(text.contains(
            "apiary_dataplane_drops_total{pod=\"x/b\",direction=\"ingress\",reason=\"policy_denied\"} 12\n"
        ));
        assert!(!text.contains("apiary_policy_drops_total{pod=\"x/b\",direction=\"egress\""));
    }

    #[test]
    fn every_family_parses_with_its_type() {
        let instruments = AgentMetrics::default();
        instruments.pod_started(Duration::from_millis(1500));
        instruments.image_pulled(Duration::from_secs(3));
        instruments.probed("Readiness", true);
        instruments.probed("Liveness", false);
        instruments.dns_answered("NXDOMAIN", 1);
        let state = DataplaneState {
            pods: vec![PodCounters {
                namespace: "default".into(),
                pod: "web-0".into(),
                rx_bytes: 400,
                tx_bytes: 300,
                rx_packets: 4,
                tx_packets: 3,
            }],
            maps: vec![(ENDPOINTS, 2, 4096)],
            ..DataplaneState::default()
        }
        .with_drops(
            &[(key(7, POLICY_INGRESS, DROP_POLICY_DENIED), 12)],
            &FlowNames::default(),
        );
        let text = render(&instruments, state);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let kinds = [
            ("apiary_dataplane_drops_total", "counter"),
            ("apiary_policy_drops_total", "counter"),
            ("apiary_pod_network_receive_bytes_total", "counter"),
            ("apiary_pod_network_transmit_bytes_total", "counter"),
            ("apiary_pod_network_receive_packets_total", "counter"),
            ("apiary_pod_network_transmit_packets_total", "counter"),
            ("apiary_bpf_map_entries", "gauge"),
            ("apiary_bpf_map_max_entries", "gauge"),
            ("apiary_pod_start_duration_seconds", "histogram"),
            ("apiary_image_pull_duration_seconds", "histogram"),
            ("apiary_prober_probe_total", "counter"),
            ("apiary_dns_queries_total", "counter"),
        ];
        for (name, kind) in kinds {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{text}"
            );
            let base = name.strip_suffix("_total").unwrap_or(name);
            // A histogram's `_sum` and `_count` parse apart from its buckets.
            let parsed: Vec<&str> = scrape
                .samples
                .iter()
                .filter(|s| s.metric == name || s.metric.starts_with(&format!("{base}_")))
                .map(|s| match &s.value {
                    prometheus_parse::Value::Counter(_) => "counter",
                    prometheus_parse::Value::Gauge(_) => "gauge",
                    prometheus_parse::Value::Histogram(_) => "histogram",
                    _ => "other",
                })
                .collect();
            assert!(parsed.contains(&kind), "{name}: {parsed:?}\n{text}");
        }
        let value = |name: &str, label: (&str, &str)| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value("apiary_pod_network_receive_bytes_total", ("pod", "web-0")),
            Some(prometheus_parse::Value::Counter(400.0))
        );
        assert_eq!(
            value("apiary_prober_probe_total", ("result", "failed")),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        assert_eq!(
            value("apiary_dns_queries_total", ("rcode", "NXDOMAIN")),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        assert_eq!(
            value("apiary_bpf_map_max_entries", ("map", "ENDPOINTS")),
            Some(prometheus_parse::Value::Gauge(4096.0))
        );
        assert!(
            text.contains("apiary_pod_start_duration_seconds_bucket{le=\"2\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("apiary_pod_start_duration_seconds_count 1\n"));
    }
}
