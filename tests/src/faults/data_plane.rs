//! What the data plane serves during the faults: two web pods behind Service `web` (one per
//! node), a NetworkPolicy that admits only `role: client` pods to them, and on node1 three
//! request loops: by ClusterIP, by DNS name, and one the policy denies. Each loop appends
//! `<host uptime> ok|fail` to `/tmp/log` for every request; the host's `/proc/uptime` is the
//! clock the suite shares with the pods, so a fault's window can be cut out of their logs.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;

use crate::cluster::{ClusterLab, is_ready, wait};

const IMAGE: &str = "localhost/busybox:latest";

/// The loops: (pod, target URL host, labels).
pub const LOOPS: [(&str, &str, &str); 3] = [
    ("by-ip", "CLUSTER_IP", "role: client"),
    // The short name, as pods use it: the first search domain (`default.svc.cluster.local`)
    // completes it, with no question sent outside the cluster.
    ("by-name", "web", "role: client"),
    ("denied", "CLUSTER_IP", "role: other"),
];

/// Two web pods behind Service `web`, one per node where it can be, that tolerate an
/// unreachable or not-ready node for 2 s, so a lost node's pod is replaced soon after the node is
/// noticed.
pub const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: web}}
      containers:
      - name: web
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// Only pods labelled `role: client` may reach the web pods.
pub const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
"#;

/// A pod `name` labelled `labels` on `node` that requests `http://<host>/index.html` every
/// 100 ms, logging each as `<host uptime> ok` or `<host uptime> fail <wget's message>` to
/// /tmp/log (read with [`log`]): why a request failed (a name not resolved, a refused
/// connection, a timeout) tells which part of the data plane failed it.
pub fn request_loop(name: &str, node: &str, host: &str, labels: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "while true; do if e=$(timeout 2 wget -qO- http://{host}/index.html 2>&1 >/dev/null); then r=ok; else r=\"fail $(echo $e)\"; fi; read up idle < /proc/uptime; echo \"$up $r\" >> /tmp/log; sleep 0.1; done"]
"#
    )
}

/// A web pod still meant to run (not terminating).
#[derive(Clone, Debug)]
pub struct WebPod {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub ready: bool,
}

/// The web pods still meant to run.
pub fn web_pods(cluster: &ClusterLab) -> anyhow::Result<Vec<WebPod>> {
    let pods = cluster.kubectl_json(&["get", "pods", "-l", "app=web", "-o", "json"])?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            WebPod {
                name: text(&p["metadata"]["name"]),
                node: text(&p["spec"]["nodeName"]),
                ip: text(&p["status"]["podIP"]),
                ready: is_ready(p),
            }
        })
        .collect())
}

/// Starts the web pods, the policy and the loops on `node`, and waits until every loop has
/// logged a request.
pub fn start(cluster: &ClusterLab, node: &str) -> anyhow::Result<()> {
    cluster.apply(WEB)?;
    cluster.apply(POLICY)?;
    wait("two web pods ready", Duration::from_secs(120), || {
        let pods = web_pods(cluster).unwrap_or_default();
        (pods.len() == 2 && pods.iter().all(|p| p.ready)).then_some(())
    })?;
    let pods = web_pods(cluster)?;
    anyhow::ensure!(
        pods[0].node != pods[1].node,
        "the web pods are not spread over both nodes: {pods:?}"
    );
    let service = cluster.kubectl_json(&["get", "service", "web", "-o", "json"])?;
    let ip = service["spec"]["clusterIP"].as_str().unwrap_or_default();
    for (name, host, labels) in LOOPS {
        let host = host.replace("CLUSTER_IP", ip);
        cluster.apply(&request_loop(name, node, &host, labels))?;
    }
    for (name, _, _) in LOOPS {
        cluster.wait_ready("default", name, Duration::from_secs(60))?;
        wait("the loop's first request", Duration::from_secs(30), || {
            (!log(cluster, name).ok()?.is_empty()).then_some(())
        })?;
    }
    Ok(())
}

/// A loop's requests so far.
pub fn log(cluster: &ClusterLab, pod: &str) -> anyhow::Result<Vec<Request>> {
    let text = cluster.kubectl_ok(&["exec", pod, "--", "cat", "/tmp/log"])?;
    Ok(text.lines().filter_map(Request::parse).collect())
}

/// One request of a loop, as its log line tells it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// When it ended: the host's uptime in seconds.
    pub at: f64,
    /// `None` when it succeeded, else what wget said (empty when killed by `timeout`).
    pub error: Option<String>,
}

impl Request {
    fn parse(line: &str) -> Option<Self> {
        let (up, result) = line.split_once(' ')?;
        let error = match result {
            "ok" => None,
            failed => Some(failed.strip_prefix("fail")?.trim().to_owned()),
        };
        Some(Self {
            at: up.parse().ok()?,
            error,
        })
    }
}

/// What loop `pod` saw between `from` and `to` (uptimes); nothing when its log cannot be read.
pub fn requests(cluster: &ClusterLab, pod: &str, from: f64, to: f64) -> Requests {
    log(cluster, pod)
        .map(|log| Requests::of(&log, from, to))
        .unwrap_or_default()
}

/// The host's uptime in seconds: the clock of the loops' logs.
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

/// What a loop saw between `from` and `to` (uptimes).
#[derive(Clone, Debug, Default)]
pub struct Requests {
    pub succeeded: usize,
    pub failed: usize,
    /// The longest time without a successful request.
    pub outage: Duration,
    /// How many failed with each message of wget's ("" for a request `timeout` killed).
    pub errors: BTreeMap<String, usize>,
}

impl Requests {
    pub fn of(log: &[Request], from: f64, to: f64) -> Self {
        let window = log.iter().filter(|r| (from..=to).contains(&r.at));
        let mut requests = Self::default();
        let mut last_ok = from;
        let mut outage: f64 = 0.0;
        for request in window {
            match &request.error {
                None => {
                    requests.succeeded += 1;
                    outage = outage.max(request.at - last_ok);
                    last_ok = request.at;
                }
                Some(error) => {
                    requests.failed += 1;
                    *requests.errors.entry(error.clone()).or_default() += 1;
                }
            }
        }
        outage = outage.max(to - last_ok);
        requests.outage = Duration::from_secs_f64(outage.max(0.0));
        requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_its_requests_and_the_longest_time_without_success() {
        let log: Vec<Request> = [
            "9.0 fail",
            "10.0 ok",
            "10.5 fail wget: bad address 'web'",
            "11.0 fail",
            "12.5 ok",
            "13.0 ok",
            "20.0 fail wget: can't connect to remote host: Connection refused",
        ]
        .into_iter()
        .map(|line| Request::parse(line).unwrap())
        .collect();
        let r = Requests::of(&log, 10.0, 14.0);
        assert_eq!((r.succeeded, r.failed), (3, 2));
        assert_eq!(
            r.errors,
            BTreeMap::from([
                ("".to_owned(), 1),
                ("wget: bad address 'web'".to_owned(), 1)
            ])
        );
        assert_eq!(r.outage, Duration::from_secs_f64(2.5));
        // Nothing succeeded after 13.0 up to the window's end.
        let r = Requests::of(&log, 12.0, 20.0);
        assert_eq!(r.outage, Duration::from_secs(7));
    }
}
