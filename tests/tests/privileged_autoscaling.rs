//! Resource metrics and autoscaling on a lab cluster with real pods (youki, busybox): pods that
//! burn CPU show in `kubectl top`, an HPA at 50 % CPU (made with `kubectl autoscale`) scales
//! their Deployment up, and back down once they stop; the agent's `/metrics`, `/metrics/resource`
//! and `/stats/summary` parse as Prometheus and the kubelet's Summary API.

use std::time::{Duration, Instant};

use apiary_tests::{cluster::ClusterLab, require_privileges};
use serde_json::Value;

/// Burns CPU (at most its 200m limit: twice its request) until the node's `stop` file appears.
fn deployment(load_dir: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "while [ ! -f /load/stop ]; do :; done; exec sleep 1000000"]
        resources:
          requests: {{cpu: 100m}}
          limits: {{cpu: 200m}}
        volumeMounts: [{{name: load, mountPath: /load}}]
      volumes:
      - name: load
        hostPath: {{path: {load_dir}, type: Directory}}
"#
    )
}

/// Polls `check` every second until it holds, for at most `seconds`.
fn eventually<T>(
    cluster: &ClusterLab,
    what: &str,
    seconds: u64,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn replicas(cluster: &ClusterLab) -> i64 {
    cluster
        .kubectl_json(&["get", "deployment", "burn", "-o", "json"])
        .map_or(0, |d| d["spec"]["replicas"].as_i64().unwrap_or(0))
}

/// Millicores of a `kubectl top` CPU cell (`250m`, `1`).
fn millicores(cell: &str) -> i64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => cell.parse::<i64>().map_or(0, |c| c * 1000),
    }
}

#[test]
fn privileged_pods_burning_cpu_show_in_top_and_scale_their_deployment() {
    require_privileges!();
    let cluster = ClusterLab::start_with_agents(
        1,
        &[
            "--metric-resolution",
            "2",
            "--horizontal-pod-autoscaler-sync-period",
            "2",
            "--horizontal-pod-autoscaler-downscale-stabilization",
            "10",
        ],
        &["--metrics-interval-seconds", "2"],
    )
    .unwrap();
    let node = cluster.nodes()[0].name.clone();
    let load_dir = cluster.dir.path().join("load");
    std::fs::create_dir(&load_dir).unwrap();
    cluster
        .apply(&deployment(&load_dir.display().to_string()))
        .unwrap();

    // kubectl top: the node, then the burning pod, within 30 s of it running.
    let top = eventually(&cluster, "kubectl top nodes", 60, || {
        let out = cluster.kubectl_ok(&["top", "nodes", "--no-headers"]).ok()?;
        let cells: Vec<&str> = out.split_whitespace().collect();
        (cells.first() == Some(&node.as_str()) && millicores(cells[1]) > 0).then_some(out)
    });
    eprintln!("kubectl top nodes: {top}");
    let pod_cpu = eventually(&cluster, "kubectl top pods", 60, || {
        let out = cluster
            .kubectl_ok(&[
                "top",
                "pods",
                "-l",
                "app=burn",
                "--containers",
                "--no-headers",
            ])
            .ok()?;
        let cells: Vec<&str> = out.split_whitespace().collect();
        // POD NAME CPU MEMORY: a busy loop under a 200m limit.
        (cells.len() >= 4 && cells[1] == "burn" && millicores(cells[2]) >= 100)
            .then(|| millicores(cells[2]))
    });
    assert!(pod_cpu <= 260, "the 200m limit holds: {pod_cpu}m");

    // The agent's own views, through nodes/proxy.
    let raw = |path: &str| {
        cluster
            .kubectl_ok(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy{path}")])
            .unwrap()
    };
    let resource = raw("/metrics/resource");
    let parsed =
        prometheus_parse::Scrape::parse(resource.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for family in [
        "node_cpu_usage_seconds_total",
        "node_memory_working_set_bytes",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_start_time_seconds",
        "pod_cpu_usage_seconds_total",
    ] {
        assert!(
            parsed.samples.iter().any(|s| s.metric == family),
            "{family} missing from {resource}"
        );
    }
    let summary: Value = serde_json::from_str(&raw("/stats/summary")).unwrap();
    assert_eq!(summary["node"]["nodeName"], node.as_str());
    let burn = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"].as_str().unwrap().starts_with("burn-"))
        .unwrap_or_else(|| panic!("no burn pod in {summary}"));
    assert!(
        burn["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{burn}"
    );
    assert!(
        burn["memory"]["workingSetBytes"].as_u64().is_some(),
        "{burn}"
    );
    let metrics = raw("/metrics");
    let parsed =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for family in [
        "apiary_pod_start_duration_seconds",
        "apiary_bpf_map_entries",
        "apiary_pod_network_receive_bytes_total",
    ] {
        assert!(
            parsed.docs.contains_key(family)
                || parsed.samples.iter().any(|s| s.metric.starts_with(family)),
            "{family} missing from {metrics}"
        );
    }

    // And the control plane's.
    let exposition = cluster.kubectl_ok(&["get", "--raw", "/metrics"]).unwrap();
    let parsed =
        prometheus_parse::Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for family in [
        "apiserver_request_total",
        "apiserver_request_duration_seconds",
        "etcd_request_duration_seconds",
        "scheduler_schedule_attempts_total",
        "workqueue_depth",
        "leader_election_master_status",
    ] {
        assert!(
            parsed.samples.iter().any(|s| s.metric.starts_with(family)),
            "{family} missing from the control plane's /metrics"
        );
    }

    // The HPA: 200m of a 100m request is 400 % of the 50 % target.
    cluster
        .kubectl_ok(&[
            "autoscale",
            "deployment",
            "burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=5",
        ])
        .unwrap();
    let started = Instant::now();
    let up = eventually(&cluster, "the scale-up to 3 or more", 120, || {
        let n = replicas(&cluster);
        (n >= 3).then_some(n)
    });
    eprintln!(
        "scaled up to {up} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let hpa = cluster.kubectl_ok(&["get", "hpa", "burn"]).unwrap();
    eprintln!("{hpa}");

    // The load stops: back to one pod after the 10 s downscale window.
    std::fs::write(load_dir.join("stop"), "").unwrap();
    let stopped = Instant::now();
    eventually(&cluster, "the scale-down to 1", 180, || {
        (replicas(&cluster) == 1).then_some(())
    });
    eprintln!(
        "scaled down to 1 in {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    let events = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=burn,reason=SuccessfulRescale",
            "-o",
            "json",
        ])
        .unwrap();
    assert!(events.contains("above target"), "{events}");
    assert!(events.contains("All metrics below target"), "{events}");
}
