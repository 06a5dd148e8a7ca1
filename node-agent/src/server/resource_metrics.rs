//! `GET /metrics/resource`: the kubelet's resource metrics (what metrics-server scrapes for
//! `kubectl top` and the HPA), in the kubelet's exposition: the same families, HELP texts with
//! their stability, label names, sorting, millisecond sample timestamps and Go's number format.
//! Written by hand because `prometheus-client` cannot put timestamps on samples.

use std::fmt::Write as _;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse as _, Response},
};
use chrono::{DateTime, Utc};

use crate::stats::{Latest, Snapshot};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label pairs, sorted by name.
type Labels = Vec<(&'static str, String)>;

/// One family: name, HELP (with the kubelet's stability prefix), TYPE, and its samples as
/// (labels, value, timestamp).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(Labels, f64, Option<DateTime<Utc>>)>,
}

/// The exposition of `snapshot` (`None`: nothing collected yet, a scrape error).
pub fn render(snapshot: Option<&Snapshot>) -> String {
    let family = |name, help, kind| Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    };
    let mut container_cpu = family(
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    );
    let mut container_memory = family(
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
    );
    let mut container_start = family(
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
    );
    let mut node_cpu = family(
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    );
    let mut node_memory = family(
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        "gauge",
    );
    let mut pod_cpu = family(
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    );
    let mut pod_memory = family(
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        "gauge",
    );
    let error = snapshot.is_none_or(|s| s.error);
    let mut scrape_error = family(
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    scrape_error
        .samples
        .push((vec![], f64::from(u8::from(error)), None));
    // Deprecated in 1.29 for `resource_scrape_error`; older scrapers still read it.
    let mut legacy_error = family(
        "scrape_error",
        "[ALPHA] (Deprecated since 1.29.0) 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    legacy_error
        .samples
        .push((vec![], f64::from(u8::from(error)), None));

    let seconds = |ns: u64| ns as f64 / 1e9;
    if let Some(snapshot) = snapshot {
        if let Some(cpu) = snapshot.node.cpu {
            node_cpu
                .samples
                .push((vec![], seconds(cpu.usage_core_nano_seconds), Some(cpu.time)));
        }
        if let Some(memory) = snapshot.node.memory {
            node_memory
                .samples
                .push((vec![], memory.working_set_bytes as f64, Some(memory.time)));
        }
        for pod in &snapshot.pods {
            let pod_labels = || {
                vec![
                    ("namespace", pod.namespace.clone()),
                    ("pod", pod.name.clone()),
                ]
            };
            for c in &pod.containers {
                let labels = || {
                    let mut l = vec![("container", c.name.clone())];
                    l.extend(pod_labels());
                    l
                };
                if c.start_time.timestamp() > 0 {
                    let start = c.start_time.timestamp_nanos_opt().unwrap_or(0) as f64 / 1e9;
                    container_start.samples.push((labels(), start, None));
                }
                if let Some(cpu) = c.cpu {
                    container_cpu.samples.push((
                        labels(),
                        seconds(cpu.usage_core_nano_seconds),
                        Some(cpu.time),
                    ));
                }
                if let Some(memory) = c.memory {
                    container_memory.samples.push((
                        labels(),
                        memory.working_set_bytes as f64,
                        Some(memory.time),
                    ));
                }
            }
            if let Some(cpu) = pod.cpu {
                pod_cpu.samples.push((
                    pod_labels(),
                    seconds(cpu.usage_core_nano_seconds),
                    Some(cpu.time),
                ));
            }
            if let Some(memory) = pod.memory {
                pod_memory.samples.push((
                    pod_labels(),
                    memory.working_set_bytes as f64,
                    Some(memory.time),
                ));
            }
        }
    }

    let mut out = String::new();
    // Go's registry sorts families by name and samples by label values.
    for mut family in [
        container_cpu,
        container_memory,
        container_start,
        node_cpu,
        node_memory,
        pod_cpu,
        pod_memory,
        scrape_error,
        legacy_error,
    ] {
        family.samples.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (labels, value, time) in family.samples {
            out.push_str(family.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v));
                }
                out.push('}');
            }
            let _ = write!(out, " {}", go_float(value));
            if let Some(time) = time {
                let _ = write!(out, " {}", time.timestamp_millis());
            }
            out.push('\n');
        }
    }
    out
}

/// A label value as the text format escapes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `v` as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes it (the Prometheus Go client's
/// format): the shortest digits, in exponent form when the exponent is below -4 or 6 and over.
fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e}'s exponent is a number");
    if (-4..6).contains(&exp) {
        format!("{v}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

pub(super) async fn handle(State(latest): State<Latest>) -> Response {
    let snapshot = latest.get();
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(snapshot.as_deref()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_as_go_does() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(2.5), "2.5");
        assert_eq!(go_float(123_456.0), "123456");
        assert_eq!(go_float(52_428_800.0), "5.24288e+07");
        assert_eq!(go_float(1.7e21), "1.7e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(1_767_323_047.5), "1.7673230475e+09");
    }

    #[test]
    fn the_kubelet_families_parse_with_values_from_the_cgroup_files() {
        let root = tempfile::tempdir().unwrap();
        let (mut collector, pods) = crate::stats::tests::fixture(root.path());
        let now: DateTime<Utc> = "2026-01-02T03:05:00.250Z".parse().unwrap();
        let snapshot = collector.sample(pods, now);
        let text = render(Some(&snapshot));
        assert!(text.contains(
            "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds\n\
             # TYPE container_cpu_usage_seconds_total counter\n\
             container_cpu_usage_seconds_total{container=\"side\",namespace=\"default\",pod=\"web-0\"} 0.5 1767323100250\n\
             container_cpu_usage_seconds_total{container=\"web\",namespace=\"default\",pod=\"web-0\"} 2 1767323100250\n"
        ), "{text}");

        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let sample = scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .unwrap_or_else(|| panic!("{name} {labels:?} in\n{text}"));
            match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            }
        };
        let web = [
            ("container", "web"),
            ("namespace", "default"),
            ("pod", "web-0"),
        ];
        assert_eq!(value("container_cpu_usage_seconds_total", &web), 2.0);
        assert_eq!(
            value("container_memory_working_set_bytes", &web),
            f64::from(40u32 << 20)
        );
        assert_eq!(value("container_start_time_seconds", &web), 1_767_323_047.0);
        let pod = [("namespace", "default"), ("pod", "web-0")];
        assert_eq!(value("pod_cpu_usage_seconds_total", &pod), 2.5);
        assert_eq!(
            value("pod_memory_working_set_bytes", &pod),
            f64::from(48u32 << 20)
        );
        assert_eq!(value("node_cpu_usage_seconds_total", &[]), 123.456789);
        assert_eq!(
            value("node_memory_working_set_bytes", &[]),
            f64::from(2047u32 << 20)
        );
        assert_eq!(value("resource_scrape_error", &[]), 0.0);
        assert_eq!(value("scrape_error", &[]), 0.0);
        for (name, kind) in [
            ("container_cpu_usage_seconds_total", "counter"),
            ("node_cpu_usage_seconds_total", "counter"),
            ("pod_cpu_usage_seconds_total", "counter"),
            ("container_memory_working_set_bytes", "gauge"),
            ("node_memory_working_set_bytes", "gauge"),
            ("pod_memory_working_set_bytes", "gauge"),
            ("container_start_time_seconds", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        }
        // Usage samples carry the collection time in milliseconds; start times none.
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == "node_memory_working_set_bytes")
            .unwrap();
        assert_eq!(sample.timestamp.timestamp_millis(), 1_767_323_100_250);
        assert!(text.contains(
            "container_start_time_seconds{container=\"web\",namespace=\"default\",pod=\"web-0\"} 1.767323047e+09\n"
        ));
    }

    #[test]
    fn nothing_collected_yet_is_a_scrape_error() {
        let text = render(None);
        assert!(text.contains("\nresource_scrape_error 1\n"));
        assert!(text.contains("\nscrape_error 1\n"));
        assert!(!text.contains("\nnode_cpu_usage_seconds_total "));
    }
}
