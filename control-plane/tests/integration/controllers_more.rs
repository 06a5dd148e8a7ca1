//! End-to-end: the Endpoints/EndpointSlice and Job controllers, driven through the real
//! `kubectl`. There are no kubelets: the tests write pod status (IP, readiness, phase) through
//! `pods/{name}/status` themselves.

use crate::support;

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::ControlPlane;

/// Polls `check` until it returns `Some`, or panics after `seconds` with `what`.
fn wait_for<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn name(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap().to_owned()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn patch_status(cp: &ControlPlane, pod: &str, status: &Value) {
    cp.kubectl(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({ "status": status }).to_string(),
    ])
    .success();
}

fn running(ip: &str, ready: bool) -> Value {
    json!({
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{ "ip": ip }],
        "conditions": [{
            "type": "Ready",
            "status": if ready { "True" } else { "False" },
            "lastTransitionTime": now(),
        }],
    })
}

fn web_pod(name: &str, named_port: bool) -> String {
    let ports = if named_port {
        "\n    ports:\n    - {name: http, containerPort: 8080}"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
  finalizers: [example.com/hold]
spec:
  nodeName: node-1
  containers:
  - name: web
    image: localhost/busybox:1{ports}
"#
    )
}

const WEB_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9000, targetPort: 9100}
"#;

const MANUAL: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: manual
spec:
  ports:
  - {port: 80}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: manual
subsets:
- addresses: [{ip: 192.0.2.10}]
  ports: [{port: 80}]
"#;

/// The IPs of a subset's `field`, sorted.
fn ips(subset: &Value, field: &str) -> Vec<String> {
    let mut ips: Vec<String> = subset[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["ip"].as_str().unwrap().to_owned())
        .collect();
    ips.sort();
    ips
}

fn slice_endpoints(cp: &ControlPlane) -> Vec<Value> {
    let slices = items(&cp.kubectl_json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ]));
    slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn endpoints_and_slices_follow_pods() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], MANUAL).success();
    cp.kubectl_stdin(&["apply", "-f", "-"], WEB_SERVICE)
        .success();
    for (pod, named) in [("a", true), ("b", true), ("c", false)] {
        cp.kubectl_stdin(&["apply", "-f", "-"], &web_pod(pod, named))
            .success();
    }
    patch_status(&cp, "a", &running("10.1.0.1", true));
    patch_status(&cp, "b", &running("10.1.0.2", false));
    patch_status(&cp, "c", &running("10.1.0.3", true));

    // a and b resolve both ports (http → 8080); c only the numeric one.
    let subsets = wait_for(60, "the endpoints of web", || {
        let ep = cp.kubectl_json(&["get", "endpoints", "web", "-o", "json"]);
        let subsets = ep["subsets"].as_array().cloned().unwrap_or_default();
        (subsets.len() == 2).then_some(subsets)
    });
    let both = subsets
        .iter()
        .find(|s| s["ports"].as_array().unwrap().len() == 2)
        .unwrap();
    assert_eq!(ips(both, "addresses"), ["10.1.0.1"]);
    assert_eq!(ips(both, "notReadyAddresses"), ["10.1.0.2"]);
    let mut ports: Vec<i64> = both["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [8080, 9100]);
    assert_eq!(both["addresses"][0]["targetRef"]["name"], "a");
    assert_eq!(both["addresses"][0]["nodeName"], "node-1");
    let only = subsets
        .iter()
        .find(|s| s["ports"].as_array().unwrap().len() == 1)
        .unwrap();
    assert_eq!(ips(only, "addresses"), ["10.1.0.3"]);
    assert_eq!(only["ports"][0]["port"], 9100);

    let slices = items(&cp.kubectl_json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ]));
    assert_eq!(slices.len(), 2, "{slices:#?}");
    for slice in &slices {
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(slice["metadata"]["ownerReferences"][0]["name"], "web");
    }
    let endpoints = slice_endpoints(&cp);
    let b = endpoints
        .iter()
        .find(|e| e["targetRef"]["name"] == "b")
        .unwrap();
    assert_eq!(
        b["conditions"],
        json!({ "ready": false, "serving": false, "terminating": false })
    );
    assert_eq!(b["nodeName"], "node-1");
    let a = endpoints
        .iter()
        .find(|e| e["targetRef"]["name"] == "a")
        .unwrap();
    assert_eq!(a["addresses"], json!(["10.1.0.1"]));
    assert_eq!(a["conditions"]["ready"], true);

    // kubectl shows them.
    let shown = cp.kubectl(&["get", "endpoints", "web"]).success();
    assert!(shown.contains("10.1.0.1:8080"), "{shown}");
    let shown = cp.kubectl(&["get", "endpointslices"]).success();
    assert!(
        shown.contains("IPv4") && shown.contains("10.1.0.1"),
        "{shown}"
    );

    // No write storms: the objects stay put while nothing changes.
    let version = |kind: &str, n: &str| {
        cp.kubectl_json(&["get", kind, n, "-o", "json"])["metadata"]["resourceVersion"].clone()
    };
    let before = version("endpoints", "web");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(version("endpoints", "web"), before);

    // A terminating pod (held by its finalizer) is terminating in its slice, gone from the
    // Endpoints.
    cp.kubectl(&["delete", "pod", "a", "--wait=false"])
        .success();
    wait_for(60, "a terminating", || {
        let endpoints = slice_endpoints(&cp);
        let a = endpoints.iter().find(|e| e["targetRef"]["name"] == "a")?;
        (a["conditions"] == json!({ "ready": false, "serving": true, "terminating": true }))
            .then_some(())
    });
    wait_for(60, "a out of the endpoints", || {
        let ep = cp.kubectl_json(&["get", "endpoints", "web", "-o", "json"]);
        let all: Vec<String> = ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| [ips(s, "addresses"), ips(s, "notReadyAddresses")].concat())
            .collect();
        (!all.contains(&"10.1.0.1".to_owned()) && all.len() == 2).then_some(())
    });
    // Once deleted for good, it leaves the slices too.
    cp.kubectl(&[
        "patch",
        "pod",
        "a",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .success();
    wait_for(60, "a out of the slices", || {
        (!slice_endpoints(&cp)
            .iter()
            .any(|e| e["targetRef"]["name"] == "a"))
        .then_some(())
    });

    // b becomes ready.
    patch_status(&cp, "b", &running("10.1.0.2", true));
    wait_for(60, "b ready", || {
        let ep = cp.kubectl_json(&["get", "endpoints", "web", "-o", "json"]);
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| ips(s, "addresses") == ["10.1.0.2"] && s["notReadyAddresses"].is_null())
            .then_some(())
    });

    // The hand-written Endpoints of the selector-less Service are untouched (only mirrored,
    // see `selectorless_endpoints_are_mirrored_into_slices`).
    let manual = cp.kubectl_json(&["get", "endpoints", "manual", "-o", "json"]);
    assert_eq!(manual["subsets"][0]["addresses"][0]["ip"], "192.0.2.10");
    assert!(
        items(&cp.kubectl_json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=manual,endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io",
            "-o",
            "json"
        ]))
        .is_empty()
    );
    for pod in ["b", "c"] {
        cp.kubectl(&[
            "patch",
            "pod",
            pod,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .success();
    }
}

const DB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  ports:
  - {name: sql, port: 5432}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-by-hand
  labels:
    kubernetes.io/service-name: db
    endpointslice.kubernetes.io/managed-by: by-hand.example.com
addressType: IPv4
endpoints:
- addresses: [198.51.100.9]
ports:
- {name: sql, port: 5432}
"#;

/// Hand-written Endpoints of `db` with these ready and not-ready addresses.
fn db_endpoints(ready: &[&str], not_ready: &[&str], labels: &str) -> String {
    let list = |ips: &[&str]| {
        ips.iter()
            .map(|ip| format!("{{ip: {ip}, nodeName: node-1}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
apiVersion: v1
kind: Endpoints
metadata:
  name: db
  labels: {{{labels}}}
subsets:
- addresses: [{}]
  notReadyAddresses: [{}]
  ports: [{{name: sql, port: 5432, protocol: TCP}}]
"#,
        list(ready),
        list(not_ready)
    )
}

const MIRRORED: &str = "kubernetes.io/service-name=db,endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io";

/// The mirrored slices of `db`: (address, ready) of every endpoint, sorted.
fn mirrored(cp: &ControlPlane) -> Vec<(String, bool)> {
    let slices = items(&cp.kubectl_json(&["get", "endpointslices", "-l", MIRRORED, "-o", "json"]));
    let mut endpoints: Vec<(String, bool)> = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let ip = e["addresses"][0].as_str().unwrap().to_owned();
            (ip, e["conditions"]["ready"].as_bool().unwrap())
        })
        .collect();
    endpoints.sort();
    endpoints
}

fn wait_mirrored(cp: &ControlPlane, what: &str, want: &[(&str, bool)]) {
    let want: Vec<(String, bool)> = want.iter().map(|(ip, r)| ((*ip).to_owned(), *r)).collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        seen = mirrored(cp);
        if seen == want {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}: mirrored {seen:?}, want {want:?}");
}

#[test]
fn selectorless_endpoints_are_mirrored_into_slices() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], DB).success();
    let by_hand_version = |cp: &ControlPlane| {
        let slice = cp.kubectl_json(&["get", "endpointslice", "db-by-hand", "-o", "json"]);
        slice["metadata"]["resourceVersion"].clone()
    };
    let by_hand = by_hand_version(&cp);
    let apply_endpoints = |ready: &[&str], not_ready: &[&str], labels: &str| {
        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &db_endpoints(ready, not_ready, labels),
        )
        .success();
    };

    // Create: ready and not-ready addresses, the ports, the labels and the owner.
    apply_endpoints(&["192.0.2.1"], &["192.0.2.2"], "team: data");
    wait_mirrored(
        &cp,
        "the first mirror",
        &[("192.0.2.1", true), ("192.0.2.2", false)],
    );
    let slice =
        &items(&cp.kubectl_json(&["get", "endpointslices", "-l", MIRRORED, "-o", "json"]))[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["ports"],
        json!([{ "name": "sql", "port": 5432, "protocol": "TCP" }])
    );
    assert_eq!(slice["metadata"]["labels"]["team"], "data");
    assert_eq!(slice["endpoints"][0]["nodeName"], "node-1");
    let owner = &slice["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Endpoints"), Some("db"))
    );

    // Update: an address added, one gone, one turned ready.
    apply_endpoints(&["192.0.2.1", "192.0.2.2", "192.0.2.3"], &[], "team: data");
    wait_mirrored(
        &cp,
        "the updated mirror",
        &[
            ("192.0.2.1", true),
            ("192.0.2.2", true),
            ("192.0.2.3", true),
        ],
    );
    apply_endpoints(&["192.0.2.3"], &[], "team: data");
    wait_mirrored(&cp, "192.0.2.1 and .2 gone", &[("192.0.2.3", true)]);

    // A mirrored slice deleted by hand comes back.
    cp.kubectl(&["delete", "endpointslices", "-l", MIRRORED])
        .success();
    wait_mirrored(&cp, "the mirror put back", &[("192.0.2.3", true)]);

    // skip-mirror: the mirror goes; without it, it comes back.
    apply_endpoints(
        &["192.0.2.3"],
        &[],
        r#"team: data, endpointslice.kubernetes.io/skip-mirror: "true""#,
    );
    wait_mirrored(&cp, "the skipped mirror gone", &[]);
    apply_endpoints(&["192.0.2.3"], &[], "team: data");
    wait_mirrored(&cp, "the mirror back", &[("192.0.2.3", true)]);

    // The Service gains a selector: the Endpoints controller takes over (with the pod it now
    // selects), and what it writes is not mirrored.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: db-0, labels: {app: db}}\n\
         spec: {nodeName: node-1, containers: [{name: db, image: localhost/busybox:1}]}\n",
    )
    .success();
    patch_status(&cp, "db-0", &running("10.1.0.9", true));
    cp.kubectl(&[
        "patch",
        "service",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"app":"db"}}}"#,
    ])
    .success();
    wait_for(60, "the endpoints controller to take over", || {
        let ep = cp.kubectl_json(&["get", "endpoints", "db", "-o", "json"]);
        (ep["subsets"][0]["addresses"][0]["ip"] == "10.1.0.9").then_some(())
    });
    wait_mirrored(&cp, "no mirror of a selecting service", &[]);
    cp.kubectl(&["delete", "pod", "db-0", "--wait=false"])
        .success();
    cp.kubectl(&[
        "patch",
        "service",
        "db",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/selector"}]"#,
    ])
    .success();
    apply_endpoints(&["192.0.2.4"], &[], "team: data");
    wait_mirrored(&cp, "the mirror without selector", &[("192.0.2.4", true)]);

    // Delete: the Endpoints, then (re-created) the Service.
    cp.kubectl(&["delete", "endpoints", "db"]).success();
    wait_mirrored(&cp, "no mirror without endpoints", &[]);
    apply_endpoints(&["192.0.2.5"], &[], "team: data");
    wait_mirrored(&cp, "the mirror of new endpoints", &[("192.0.2.5", true)]);
    cp.kubectl(&["delete", "service", "db"]).success();
    wait_mirrored(&cp, "no mirror without service", &[]);

    // The slice managed by someone else was never touched.
    assert_eq!(by_hand_version(&cp), by_hand);
}

fn job_pods(cp: &ControlPlane, job: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&[
        "get",
        "pods",
        "-l",
        &format!("job-name={job}"),
        "-o",
        "json",
    ]))
}

fn job_manifest(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
{extra}
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: localhost/busybox:1
"#
    )
}

fn condition(job: &Value, kind: &str) -> Option<Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .cloned()
}

/// Sets the phase of every running pod of `job` (at most `limit` of them).
fn finish_pods(cp: &ControlPlane, job: &str, phase: &str, limit: usize) -> usize {
    let mut done = 0;
    for pod in job_pods(cp, job) {
        if done == limit {
            break;
        }
        if pod["status"]["phase"] == "Succeeded" || pod["status"]["phase"] == "Failed" {
            continue;
        }
        patch_status(cp, &name(&pod), &json!({ "phase": phase }));
        done += 1;
    }
    done
}

fn running_pods(cp: &ControlPlane, job: &str) -> usize {
    job_pods(cp, job)
        .iter()
        .filter(|p| p["status"]["phase"] != "Succeeded" && p["status"]["phase"] != "Failed")
        .count()
}

#[test]
fn job_runs_completions_with_parallelism_and_expires() {
    let cp = ControlPlane::start();
    let manifest = job_manifest(
        "pi",
        "  completions: 3\n  parallelism: 2\n  ttlSecondsAfterFinished: 3",
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &manifest).success();
    let job = cp.kubectl_json(&["get", "job", "pi", "-o", "json"]);
    let uid = job["metadata"]["uid"].as_str().unwrap().to_owned();
    wait_for(60, "2 pods", || {
        (running_pods(&cp, "pi") == 2).then_some(())
    });
    thread::sleep(Duration::from_secs(1));
    let pods = job_pods(&cp, "pi");
    assert_eq!(pods.len(), 2, "parallelism caps the pods");
    for pod in &pods {
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid.as_str());
        assert_eq!(labels["controller-uid"], uid.as_str());
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].clone(), owner["controller"].clone()),
            (json!("Job"), json!(true))
        );
    }
    let status = cp.kubectl_json(&["get", "job", "pi", "-o", "json"])["status"].clone();
    assert_eq!(status["active"], 2);
    assert!(status["startTime"].is_string());

    // Two succeed: one more runs (3 completions), no more than that.
    finish_pods(&cp, "pi", "Succeeded", 2);
    wait_for(60, "the third pod", || {
        let s = cp.kubectl_json(&["get", "job", "pi", "-o", "json"])["status"].clone();
        (running_pods(&cp, "pi") == 1 && s["succeeded"] == 2 && s["active"] == 1).then_some(())
    });
    let waiter = cp.kubectl_spawn(&[
        "wait",
        "--for=condition=complete",
        "job/pi",
        "--timeout=60s",
    ]);
    finish_pods(&cp, "pi", "Succeeded", 1);
    let mut waiter = waiter;
    waiter.read_until(|out| out.contains("condition met"), 60);
    let job = cp.kubectl_json(&["get", "job", "pi", "-o", "json"]);
    assert_eq!(job["status"]["succeeded"], 3);
    assert!(job["status"]["completionTime"].is_string());
    assert!(condition(&job, "Complete").is_some());
    let events = items(&cp.kubectl_json(&["get", "events", "-o", "json"]));
    for reason in ["SuccessfulCreate", "Completed"] {
        assert!(
            events
                .iter()
                .any(|e| e["reason"] == reason && e["involvedObject"]["name"] == "pi"),
            "no {reason} event"
        );
    }

    // ttlSecondsAfterFinished: the job goes, and its pods with it.
    wait_for(60, "the job and its pods gone", || {
        (!cp.kubectl(&["get", "job", "pi"]).ok() && job_pods(&cp, "pi").is_empty()).then_some(())
    });
}

#[test]
fn job_fails_past_its_backoff_limit_or_deadline() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &job_manifest(
            "flaky",
            "  backoffLimit: 1\n  parallelism: 2\n  completions: 5",
        ),
    )
    .success();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &job_manifest("slow", "  activeDeadlineSeconds: 3"),
    )
    .success();

    wait_for(60, "2 flaky pods", || {
        (running_pods(&cp, "flaky") == 2).then_some(())
    });
    // One failure is within the limit: replaced.
    finish_pods(&cp, "flaky", "Failed", 1);
    wait_for(60, "a replacement", || {
        let s = cp.kubectl_json(&["get", "job", "flaky", "-o", "json"])["status"].clone();
        (s["failed"] == 1 && running_pods(&cp, "flaky") == 2).then_some(())
    });
    // A second exceeds it: Failed, and the running pod is deleted.
    finish_pods(&cp, "flaky", "Failed", 1);
    let job = wait_for(60, "flaky failed", || {
        let job = cp.kubectl_json(&["get", "job", "flaky", "-o", "json"]);
        condition(&job, "Failed").is_some().then_some(job)
    });
    assert_eq!(
        condition(&job, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(job["status"]["failed"], 2);
    wait_for(60, "flaky's running pod deleted", || {
        (running_pods(&cp, "flaky") == 0).then_some(())
    });
    cp.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/flaky",
        "--timeout=30s",
    ])
    .success();

    let job = wait_for(60, "slow past its deadline", || {
        let job = cp.kubectl_json(&["get", "job", "slow", "-o", "json"]);
        condition(&job, "Failed").is_some().then_some(job)
    });
    assert_eq!(
        condition(&job, "Failed").unwrap()["reason"],
        "DeadlineExceeded"
    );
    wait_for(60, "slow's pod deleted", || {
        (running_pods(&cp, "slow") == 0).then_some(())
    });
    let events = items(&cp.kubectl_json(&["get", "events", "-o", "json"]));
    assert!(events.iter().any(|e| e["reason"] == "BackoffLimitExceeded"));
}

#[test]
fn suspended_job_runs_no_pods_until_resumed() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &job_manifest("later", "  suspend: true"),
    )
    .success();
    wait_for(60, "the Suspended condition", || {
        let job = cp.kubectl_json(&["get", "job", "later", "-o", "json"]);
        condition(&job, "Suspended").is_some().then_some(())
    });
    assert!(job_pods(&cp, "later").is_empty());
    cp.kubectl(&[
        "patch",
        "job",
        "later",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ])
    .success();
    wait_for(60, "a pod", || {
        (running_pods(&cp, "later") == 1).then_some(())
    });
    finish_pods(&cp, "later", "Succeeded", 1);
    cp.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/later",
        "--timeout=60s",
    ])
    .success();
}

fn cron_job_manifest(name: &str, schedule: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}
spec:
  schedule: "{schedule}"
  jobTemplate:
    metadata:
      labels: {{cron: {name}}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: work
            image: localhost/busybox:1
"#
    )
}

fn cron_jobs(cp: &ControlPlane, cron: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "jobs", "-l", &format!("cron={cron}"), "-o", "json"]))
}

/// Issue 12, item 7: validation took `@hourly` and `@every`, but the controller's own parser
/// refused them (an `UnparseableSchedule` event), so their jobs never ran.
#[test]
fn cronjobs_with_macro_schedules_start_jobs() {
    let cp = ControlPlane::start();
    // `@every 2s`: the first run is two seconds after creation.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &cron_job_manifest("every", "@every 2s"),
    )
    .success();
    // `@hourly`: the first run may be an hour away, but a last run two hours back makes the
    // latest whole hour a missed run, due at once.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &cron_job_manifest("hourly", "@hourly"),
    )
    .success();
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    cp.kubectl(&[
        "patch",
        "cronjob",
        "hourly",
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({ "status": { "lastScheduleTime": two_hours_ago } }).to_string(),
    ])
    .success();

    let every = wait_for(60, "a job of the @every CronJob", || {
        cron_jobs(&cp, "every").into_iter().next()
    });
    assert_eq!(every["metadata"]["ownerReferences"][0]["name"], "every");
    let hourly = wait_for(60, "a job of the @hourly CronJob", || {
        cron_jobs(&cp, "hourly").into_iter().next()
    });
    let at = hourly["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(at.ends_with(":00:00Z"), "@hourly ran at {at}");
    let minutes: i64 = name(&hourly)
        .strip_prefix("hourly-")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(minutes % 60, 0, "{}", name(&hourly));
    let status = cp.kubectl_json(&["get", "cronjob", "hourly", "-o", "json"])["status"].clone();
    assert_eq!(status["lastScheduleTime"], at.as_str(), "{status}");

    let events = items(&cp.kubectl_json(&["get", "events", "-o", "json"]));
    assert!(
        !events.iter().any(|e| e["reason"] == "UnparseableSchedule"),
        "{events:#?}"
    );
}
