//! `GET /stats/summary`: the kubelet's Summary API (`stats/v1alpha1`), the node's and its pods'
//! CPU, memory and network, with the kubelet's JSON field names.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse as _, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::stats::{self, Latest, Snapshot};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: Option<String>,
    pub containers: Vec<ContainerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
}

#[derive(Debug, Serialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

/// The default interface's counters inline, as the kubelet's `NetworkStats` embeds them, and
/// every interface in `interfaces`.
#[derive(Debug, Serialize)]
pub struct NetworkStats {
    pub time: String,
    #[serde(flatten)]
    pub default: InterfaceStats,
    pub interfaces: Vec<InterfaceStats>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `metav1.Time`'s format: RFC 3339 in seconds, UTC.
fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn cpu(c: stats::CpuStats) -> CpuStats {
    CpuStats {
        time: time(c.time),
        usage_nano_cores: c.usage_nano_cores,
        usage_core_nano_seconds: c.usage_core_nano_seconds,
    }
}

fn memory(m: stats::MemoryStats) -> MemoryStats {
    MemoryStats {
        time: time(m.time),
        available_bytes: m.available_bytes,
        usage_bytes: m.usage_bytes,
        working_set_bytes: m.working_set_bytes,
        rss_bytes: m.rss_bytes,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    }
}

/// The Summary of `snapshot`.
pub fn summary(snapshot: &Snapshot) -> Summary {
    Summary {
        node: NodeStats {
            node_name: snapshot.node.name.clone(),
            start_time: snapshot.node.start_time.map(time),
            cpu: snapshot.node.cpu.map(cpu),
            memory: snapshot.node.memory.map(memory),
        },
        pods: snapshot
            .pods
            .iter()
            .map(|p| PodStats {
                pod_ref: PodReference {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    uid: p.uid.clone(),
                },
                start_time: p.start_time.map(time),
                containers: p
                    .containers
                    .iter()
                    .map(|c| ContainerStats {
                        name: c.name.clone(),
                        start_time: time(c.start_time),
                        cpu: c.cpu.map(cpu),
                        memory: c.memory.map(memory),
                    })
                    .collect(),
                cpu: p.cpu.map(cpu),
                memory: p.memory.map(memory),
                network: p.network.map(|n| {
                    let eth0 = InterfaceStats {
                        name: crate::network::POD_IFACE.to_owned(),
                        rx_bytes: n.rx_bytes,
                        tx_bytes: n.tx_bytes,
                    };
                    NetworkStats {
                        time: time(n.time),
                        default: eth0.clone(),
                        interfaces: vec![eth0],
                    }
                }),
            })
            .collect(),
    }
}

pub(super) async fn handle(State(latest): State<Latest>) -> Response {
    match latest.get() {
        Some(snapshot) => Json(summary(&snapshot)).into_response(),
        None => {
            let code = StatusCode::SERVICE_UNAVAILABLE;
            let message = "no resource usage collected yet";
            (
                code,
                Json(super::status(code, "ServiceUnavailable", message)),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_and_values_are_the_kubelets() {
        let root = tempfile::tempdir().unwrap();
        let (mut collector, pods) = crate::stats::tests::fixture(root.path());
        let t0: DateTime<Utc> = "2026-01-02T03:05:00Z".parse().unwrap();
        collector.sample(pods.clone(), t0);
        let snapshot = collector.sample(pods, t0 + chrono::Duration::seconds(15));
        let json = serde_json::to_value(summary(&snapshot)).unwrap();
        let node = &json["node"];
        assert_eq!(node["nodeName"], "node-1");
        assert_eq!(node["startTime"], "2023-11-14T22:13:20Z");
        assert_eq!(node["cpu"]["time"], "2026-01-02T03:05:15Z");
        assert_eq!(node["cpu"]["usageCoreNanoSeconds"], 123_456_789_000u64);
        assert_eq!(node["cpu"]["usageNanoCores"], 0);
        assert_eq!(node["memory"]["workingSetBytes"], 2047u64 << 20);
        assert_eq!(node["memory"]["usageBytes"], 2048u64 << 20);
        assert_eq!(node["memory"]["availableBytes"], 2049u64 << 20);
        let pod = &json["pods"][0];
        assert_eq!(
            pod["podRef"],
            serde_json::json!({"name": "web-0", "namespace": "default", "uid": "u-1"})
        );
        assert_eq!(pod["startTime"], "2026-01-02T03:04:05Z");
        assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 2_500_000_000u64);
        assert_eq!(pod["memory"]["workingSetBytes"], 48u64 << 20);
        assert_eq!(pod["memory"]["rssBytes"], 8192);
        assert_eq!(pod["network"]["name"], "eth0");
        assert_eq!(pod["network"]["rxBytes"], 400);
        assert_eq!(pod["network"]["txBytes"], 300);
        assert_eq!(pod["network"]["interfaces"][0]["rxBytes"], 400);
        let web = &pod["containers"][0];
        assert_eq!(web["name"], "web");
        assert_eq!(web["startTime"], "2026-01-02T03:04:07Z");
        assert_eq!(web["cpu"]["usageCoreNanoSeconds"], 2_000_000_000u64);
        assert_eq!(web["memory"]["workingSetBytes"], 40u64 << 20);
        assert_eq!(web["memory"]["pageFaults"], 30);
        assert_eq!(web["memory"]["majorPageFaults"], 2);
        assert!(web["memory"].get("availableBytes").is_none());
    }
}
