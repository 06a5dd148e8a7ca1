//! HorizontalPodAutoscalers end to end against a fake node agent whose resource metrics say
//! what the test wants each pod to burn: `kubectl autoscale` creates an autoscaling/v1 object,
//! the controller scales the Deployment up under load and back down without it, and reports
//! through both versions, `kubectl get hpa` and events as Kubernetes does.

use crate::local_pods;
use crate::support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{
    ControlPlane,
    certs::{cluster_ca, serving_cert},
};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeName: fake
      containers:
      - name: app
        image: busybox
        resources: {requests: {cpu: 100m}}
"#;

/// Each pod's cumulative CPU, integrated at the current load between scrapes.
#[derive(Default)]
struct Burn {
    pods: Vec<String>,
    /// Per pod: the last answer's time (ms) and CPU seconds so far.
    counters: HashMap<String, (i64, f64)>,
}

fn exposition(burn: &Mutex<Burn>, millicores: i64) -> String {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut burn = burn.lock().unwrap();
    let mut out = format!(
        "node_cpu_usage_seconds_total 1 {now_ms}\nnode_memory_working_set_bytes 1048576 {now_ms}\n"
    );
    for pod in burn.pods.clone() {
        let (last, cpu) = burn.counters.entry(pod.clone()).or_insert((now_ms, 0.0));
        *cpu += millicores as f64 / 1000.0 * (now_ms - *last) as f64 / 1000.0;
        *last = now_ms;
        let labels = format!("container=\"app\",namespace=\"default\",pod=\"{pod}\"");
        out.push_str(&format!(
            "container_cpu_usage_seconds_total{{{labels}}} {cpu} {now_ms}\n\
             container_memory_working_set_bytes{{{labels}}} 1048576 {now_ms}\n\
             container_start_time_seconds{{{labels}}} 1.7e+09\n"
        ));
    }
    out
}

/// Waits up to `seconds` for `check`, keeping the Deployment's pods Running and Ready (no
/// kubelet runs them) and known to the fake agent meanwhile.
fn until<T>(
    cp: &ControlPlane,
    burn: &Mutex<Burn>,
    what: &str,
    seconds: u64,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let pods = cp.kubectl_json(&["get", "pods", "-l", "app=web", "-o", "json"]);
        let mut names = Vec::new();
        for pod in pods["items"].as_array().unwrap() {
            let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
            if pod["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            if pod["status"]["phase"] != "Running" {
                // Started and Ready long ago: past the CPU initialization period.
                let long_ago = (chrono::Utc::now() - chrono::Duration::minutes(10))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let status = json!({"status": {
                    "phase": "Running", "startTime": long_ago,
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": long_ago}],
                }});
                cp.kubectl(&[
                    "patch",
                    "pod",
                    &name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status.to_string(),
                ])
                .success();
            }
            names.push(name);
        }
        burn.lock().unwrap().pods = names;
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The `SuccessfulRescale` events of HPA `name`, as JSON.
fn rescale_events(cp: &ControlPlane, name: &str) -> String {
    let selector = format!("involvedObject.name={name},reason=SuccessfulRescale");
    cp.kubectl(&["get", "events", "--field-selector", &selector, "-o", "json"])
        .success()
}

fn replicas(cp: &ControlPlane) -> i64 {
    cp.kubectl_json(&["get", "deployment", "web", "-o", "json"])["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

#[test]
fn an_autoscaled_deployment_follows_its_pods_cpu() {
    let cp = ControlPlane::start_with(&[
        "--node-monitor-grace-seconds",
        "3600",
        "--metric-resolution",
        "1",
        "--horizontal-pod-autoscaler-sync-period",
        "1",
        "--horizontal-pod-autoscaler-downscale-stabilization",
        "3",
    ]);
    let (ca_cert, ca_key) = cluster_ca(&cp);
    let serving = serving_cert(
        &ca_cert,
        &ca_key,
        &["fake"],
        &["127.0.0.1".parse().unwrap()],
    );
    let burn = Arc::new(Mutex::new(Burn::default()));
    let load = Arc::new(AtomicI64::new(200));
    let (addr, _seen, _runtime) = support::fake_agent::start((&serving.0, &serving.1), &ca_cert, {
        let (burn, load) = (Arc::clone(&burn), Arc::clone(&load));
        move |_| exposition(&burn, load.load(Ordering::SeqCst))
    });
    cp.register_node(&local_pods::node("fake", addr.port()));
    cp.kubectl_stdin(&["apply", "-f", "-"], DEPLOYMENT)
        .success();

    // kubectl autoscale writes autoscaling/v1 or v2, as its discovery finds them.
    let created = cp
        .kubectl(&[
            "autoscale",
            "deployment",
            "web",
            "--cpu-percent=50",
            "--min=1",
            "--max=5",
            "-o",
            "json",
        ])
        .success();
    let created: Value = serde_json::from_str(&created).unwrap();
    match created["apiVersion"].as_str() {
        Some("autoscaling/v1") => assert_eq!(created["spec"]["targetCPUUtilizationPercentage"], 50),
        _ => assert_eq!(
            created["spec"]["metrics"][0]["resource"]["target"],
            json!({"type": "Utilization", "averageUtilization": 50}),
            "{created}"
        ),
    }

    // 200m of a 100m request is 400 % of the 50 % target: 4 pods (the most one step may add
    // without a behavior: max(2 × 1, 4)).
    until(&cp, &burn, "the scale-up", 60, || {
        (replicas(&cp) == 4).then_some(())
    });
    let hpa = until(&cp, &burn, "the status", 30, || {
        let hpa = cp.kubectl_json(&["get", "hpa", "web", "-o", "json"]);
        (hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .is_some())
        .then_some(hpa)
    });
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"],
        json!({"type": "Utilization", "averageUtilization": 50})
    );
    let conditions: HashMap<&str, &Value> = hpa["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c))
        .collect();
    assert_eq!(conditions["ScalingActive"]["status"], "True");
    assert_eq!(conditions["ScalingActive"]["reason"], "ValidMetricFound");
    assert_eq!(
        conditions["ScalingActive"]["message"],
        "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
    );
    assert!(conditions.contains_key("AbleToScale") && conditions.contains_key("ScalingLimited"));
    let v1 = cp.kubectl_json(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "-o",
        "json",
    ]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert!(
        v1["status"]["currentCPUUtilizationPercentage"].is_i64(),
        "{v1}"
    );
    assert!(
        v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/conditions"].is_string(),
        "{v1}"
    );
    let table = cp.kubectl(&["get", "hpa", "web", "--no-headers"]).success();
    let cells: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&cells[..2], ["web", "Deployment/web"], "{table}");
    assert_eq!(cells[2], "cpu:", "{table}");
    assert!(cells[3].ends_with("/50%"), "{table}");
    assert_eq!(&cells[4..6], ["1", "5"], "{table}");
    let events = rescale_events(&cp, "web");
    assert!(
        events.contains(
            "New size: 4; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );

    // Idle: back to the minimum once the 3 s downscale window has passed.
    load.store(0, Ordering::SeqCst);
    until(&cp, &burn, "the scale-down", 60, || {
        (replicas(&cp) == 1).then_some(())
    });
    let events = rescale_events(&cp, "web");
    assert!(
        events.contains("New size: 1; reason: All metrics below target"),
        "{events}"
    );
}

#[test]
fn what_the_controller_cannot_measure_or_the_api_refuses_is_reported() {
    let cp = ControlPlane::start_with(&["--horizontal-pod-autoscaler-sync-period", "1"]);
    cp.kubectl_stdin(&["apply", "-f", "-"], DEPLOYMENT)
        .success();
    // Written through autoscaling/v1, as older clients do: converted, defaulted, validated.
    let v1 = |name: &str, min: i64, max: i64| {
        json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": min, "maxReplicas": max, "targetCPUUtilizationPercentage": 60,
            },
        })
        .to_string()
    };
    let refused = cp
        .kubectl_stdin(&["create", "-f", "-"], &v1("bad", 3, 2))
        .failure();
    assert!(
        refused.contains(
            "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"
        ),
        "{refused}"
    );
    cp.kubectl_stdin(&["create", "-f", "-"], &v1("old", 1, 4))
        .success();
    let stored = cp.kubectl_json(&["get", "hpa", "old", "-o", "json"]);
    assert_eq!(
        stored["spec"]["metrics"][0]["resource"]["target"],
        json!({"type": "Utilization", "averageUtilization": 60})
    );
    cp.kubectl(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "old",
        "--type=merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#,
    ])
    .success();
    let patched = cp.kubectl_json(&["get", "hpa", "old", "-o", "json"]);
    assert_eq!(
        patched["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    assert_eq!(patched["metadata"]["generation"], 2, "{patched}");
    cp.kubectl(&["delete", "hpa", "old"]).success();
    // A custom metric needs a custom metrics API, which is not there.
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "requests"}, "target": {"type": "AverageValue", "averageValue": "10"}}}],
        },
    });
    cp.kubectl_stdin(&["create", "-f", "-"], &hpa.to_string())
        .success();
    let deadline = Instant::now() + Duration::from_secs(30);
    let active = loop {
        let hpa = cp.kubectl_json(&["get", "hpa", "web", "-o", "json"]);
        if let Some(c) = hpa["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ScalingActive"))
        {
            break c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ScalingActive condition: {hpa}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(active["status"], "False");
    assert_eq!(active["reason"], "FailedGetPodsMetric");
    // A target that does not exist cannot be scaled.
    let missing = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ghost"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ghost"}, "maxReplicas": 3},
    });
    cp.kubectl_stdin(&["create", "-f", "-"], &missing.to_string())
        .success();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hpa = cp.kubectl_json(&["get", "hpa", "ghost", "-o", "json"]);
        let able = hpa["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "AbleToScale").cloned());
        if let Some(able) = able {
            assert_eq!(able["status"], "False", "{hpa}");
            assert_eq!(able["reason"], "FailedGetScale", "{hpa}");
            break;
        }
        assert!(Instant::now() < deadline, "no AbleToScale condition: {hpa}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Defaults: a CPU target of 80 %, one replica at least.
    let ghost = cp.kubectl_json(&["get", "hpa", "ghost", "-o", "json"]);
    assert_eq!(ghost["spec"]["minReplicas"], 1);
    assert_eq!(
        ghost["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
}

/// A custom resource with a `scale` subresource is a target like a Deployment: above
/// `maxReplicas` it is brought down to it, through its own replica path.
#[test]
fn a_custom_resource_with_a_scale_subresource_is_scaled() {
    let cp = ControlPlane::start_with(&["--horizontal-pod-autoscaler-sync-period", "1"]);
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "workers.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "workers", "singular": "worker", "kind": "Worker"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {
                        "size": {"type": "integer"}, "selector": {"type": "string"}}},
                }}},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size",
                    "labelSelectorPath": ".status.selector"}},
            }],
        },
    });
    cp.kubectl_stdin(&["create", "-f", "-"], &crd.to_string())
        .success();
    let worker = json!({
        "apiVersion": "example.com/v1", "kind": "Worker",
        "metadata": {"name": "pool"}, "spec": {"size": 7},
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cp
        .kubectl_stdin(&["create", "-f", "-"], &worker.to_string())
        .ok()
    {
        assert!(Instant::now() < deadline, "the CRD was never served");
        std::thread::sleep(Duration::from_millis(300));
    }
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "pool"},
        "spec": {"scaleTargetRef": {"apiVersion": "example.com/v1", "kind": "Worker", "name": "pool"},
            "minReplicas": 1, "maxReplicas": 3},
    });
    cp.kubectl_stdin(&["create", "-f", "-"], &hpa.to_string())
        .success();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let size =
            cp.kubectl_json(&["get", "workers", "pool", "-o", "json"])["spec"]["size"].clone();
        if size == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker pool was not scaled to 3: {size}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let events = cp
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulRescale",
            "-o",
            "json",
        ])
        .success();
    assert!(
        events.contains("New size: 3; reason: Current number of replicas above Spec.MaxReplicas"),
        "{events}"
    );
}
