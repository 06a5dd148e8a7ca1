//! The `bench-pods` report: one table and one JSON document with every figure of
//! [`bench_net`](crate::bench_net) and [`bench_pods`](crate::bench_pods), their ratios and the
//! targets of issue 5.

use serde_json::{Value, json};

use crate::{bench_net::NetFigures, bench_pods::PodFigures};

/// Startup p99 target, seconds (Kubernetes' SLO is 5 s).
pub const STARTUP_P99_TARGET: f64 = 1.0;
/// Pod-to-pod rate target, as a fraction of the plain-veth baseline.
pub const POD_TO_POD_TARGET: f64 = 0.97;
/// Idle agent memory target, MiB.
pub const AGENT_RSS_TARGET_MIB: f64 = 30.0;

#[derive(Debug, Clone)]
pub struct Report {
    pub net: NetFigures,
    pub pods: PodFigures,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A target's verdict as the bench tables print it.
pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

impl Report {
    pub fn json(&self) -> Value {
        let (net, pods) = (&self.net, &self.pods);
        let secs = |d: std::time::Duration| d.as_secs_f64();
        json!({
            "startup": {
                "pods": pods.pods,
                "apply_seconds": secs(pods.apply),
                "p50_seconds": secs(pods.percentile(0.5)),
                "p99_seconds": secs(pods.percentile(0.99)),
                "max_seconds": secs(pods.percentile(1.0)),
                "target_p99_seconds": STARTUP_P99_TARGET,
                "ready_seconds": pods.ready.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
            },
            "pod_to_pod": {
                "rounds": net.rounds,
                "seconds_per_round": net.seconds_per_round,
                "baseline_tps": net.baseline,
                "same_node_tps": net.same_node,
                "cross_node_tps": net.cross_node,
                "same_node_ratio": net.same_node / net.baseline,
                "cross_node_ratio": net.cross_node / net.baseline,
                "underlay_tps": net.underlay,
                "underlay_ratio": net.underlay / net.baseline,
                "cross_node_to_underlay_ratio": net.cross_node / net.underlay,
                "target_ratio": POD_TO_POD_TARGET,
            },
            "agent_rss": {
                "idle_mib": mib(pods.rss_idle_kib),
                "with_pods_mib": mib(pods.rss_with_pods_kib),
                "target_idle_mib": AGENT_RSS_TARGET_MIB,
            },
        })
    }

    pub fn table(&self) -> String {
        let (net, pods) = (&self.net, &self.pods);
        let n = pods.pods;
        let ms = |d: std::time::Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        let p99 = pods.percentile(0.99).as_secs_f64();
        let same = net.same_node / net.baseline;
        let cross = net.cross_node / net.baseline;
        let idle = mib(pods.rss_idle_kib);
        let rows: Vec<[String; 4]> = vec![
            [
                format!("kubectl apply of {n} pods"),
                ms(pods.apply),
                String::new(),
                String::new(),
            ],
            [
                format!("startup p50 ({n} pods, one node)"),
                ms(pods.percentile(0.5)),
                String::new(),
                String::new(),
            ],
            [
                "startup p99".into(),
                ms(pods.percentile(0.99)),
                format!("<= {STARTUP_P99_TARGET} s"),
                verdict(p99 <= STARTUP_P99_TARGET).into(),
            ],
            [
                "startup max".into(),
                ms(pods.percentile(1.0)),
                String::new(),
                String::new(),
            ],
            [
                "TCP RR baseline (plain veth)".into(),
                format!("{:.0} /s", net.baseline),
                String::new(),
                String::new(),
            ],
            [
                "TCP RR pod->pod same node".into(),
                format!("{:.0} /s  {same:.2}x", net.same_node),
                format!(">= {POD_TO_POD_TARGET}x"),
                verdict(same >= POD_TO_POD_TARGET).into(),
            ],
            [
                "TCP RR pod->pod cross node".into(),
                format!("{:.0} /s  {cross:.2}x", net.cross_node),
                format!(">= {POD_TO_POD_TARGET}x"),
                verdict(cross >= POD_TO_POD_TARGET).into(),
            ],
            [
                "TCP RR node->node underlay".into(),
                format!(
                    "{:.0} /s  {:.2}x",
                    net.underlay,
                    net.underlay / net.baseline
                ),
                String::new(),
                String::new(),
            ],
            [
                "cross node / underlay".into(),
                format!("{:.2}x", net.cross_node / net.underlay),
                String::new(),
                String::new(),
            ],
            [
                "agent RSS idle".into(),
                format!("{idle:.1} MiB"),
                format!("<= {AGENT_RSS_TARGET_MIB} MiB"),
                verdict(idle <= AGENT_RSS_TARGET_MIB).into(),
            ],
            [
                format!("agent RSS with {n} pods"),
                format!("{:.1} MiB", mib(pods.rss_with_pods_kib)),
                String::new(),
                String::new(),
            ],
        ];
        let mut out = format!("{:<34} {:>20} {:>12} {}\n", "FIGURE", "VALUE", "TARGET", "");
        for [name, value, target, verdict] in rows {
            out.push_str(&format!("{name:<34} {value:>20} {target:>12} {verdict}\n"));
        }
        out.push_str(&format!(
            "(TCP RR: 1 byte each way on one connection, median of {} interleaved rounds of {} s; \
             startup: from the start of one kubectl apply to each pod's Ready, seen client-side)\n",
            net.rounds, net.seconds_per_round
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ratios_and_verdicts() {
        let report = Report {
            net: NetFigures {
                rounds: 3,
                seconds_per_round: 2.0,
                baseline: 1000.0,
                same_node: 980.0,
                cross_node: 500.0,
                underlay: 625.0,
            },
            pods: PodFigures {
                pods: 2,
                apply: Duration::from_millis(100),
                ready: vec![Duration::from_millis(400), Duration::from_millis(1500)],
                rss_idle_kib: 20 * 1024,
                rss_with_pods_kib: 40 * 1024,
            },
        };
        let json = report.json();
        assert_eq!(json["pod_to_pod"]["same_node_ratio"], 0.98);
        assert_eq!(json["pod_to_pod"]["cross_node_ratio"], 0.5);
        assert_eq!(json["pod_to_pod"]["cross_node_to_underlay_ratio"], 0.8);
        assert_eq!(json["startup"]["p50_seconds"], 0.4);
        assert_eq!(json["startup"]["p99_seconds"], 1.5);
        assert_eq!(json["agent_rss"]["idle_mib"], 20.0);
        let table = report.table();
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned()
        };
        assert!(line("startup p99").ends_with("MISSED"), "{table}");
        assert!(line("TCP RR pod->pod same node").ends_with("ok"), "{table}");
        assert!(
            line("TCP RR pod->pod cross node").ends_with("MISSED"),
            "{table}"
        );
        assert!(line("agent RSS idle").ends_with("ok"), "{table}");
    }
}
