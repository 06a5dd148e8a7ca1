//! End-to-end: the ReplicaSet and Deployment controllers, driven through the real `kubectl`.
//! There are no kubelets: a "fake kubelet" thread marks pods Running and Ready through
//! `pods/{name}/status`.

use crate::support;

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
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

fn pods(cp: &ControlPlane, selector: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "pods", "-l", selector, "-o", "json"]))
}

fn replicasets(cp: &ControlPlane, selector: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "rs", "-l", selector, "-o", "json"]))
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Marks every pod Running and Ready, one at a time with `pace` between pods, until dropped.
struct FakeKubelet {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(cp: &ControlPlane, pace: Duration) -> Self {
        let kubeconfig: PathBuf = cp.kubeconfig();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let kubectl = |args: &[&str]| {
                Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(args)
                    .output()
                    .unwrap()
            };
            while !stopping.load(Ordering::Relaxed) {
                let out = kubectl(&["get", "pods", "-o", "json"]);
                let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                for pod in items(&list) {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    if is_ready(&pod) || pod["metadata"]["deletionTimestamp"].is_string() {
                        continue;
                    }
                    let statuses: Vec<Value> = pod["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            serde_json::json!({
                                "name": c["name"], "image": c["image"], "imageID": "",
                                "ready": true, "started": true, "restartCount": 0,
                                "state": { "running": { "startedAt": now() } },
                            })
                        })
                        .collect();
                    let patch = serde_json::json!({ "status": {
                        "phase": "Running",
                        "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now() }],
                        "containerStatuses": statuses,
                    }});
                    kubectl(&[
                        "patch",
                        "pod",
                        &name(&pod),
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &patch.to_string(),
                    ]);
                    thread::sleep(pace);
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn events(cp: &ControlPlane) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "events", "-o", "json"]))
}

const RS: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: frontend
spec:
  replicas: 3
  selector:
    matchLabels: {app: frontend}
  template:
    metadata:
      labels: {app: frontend}
    spec:
      containers:
      - name: web
        image: localhost/busybox:1
"#;

const ORPHAN: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: orphan
  labels: {app: frontend}
spec:
  containers:
  - name: web
    image: localhost/busybox:1
"#;

#[test]
fn replicaset_keeps_its_pods_adopts_orphans_and_records_events() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], ORPHAN).success();
    cp.kubectl_stdin(&["apply", "-f", "-"], RS).success();
    let rs = cp.kubectl_json(&["get", "rs", "frontend", "-o", "json"]);
    let uid = rs["metadata"]["uid"].as_str().unwrap().to_owned();

    // The orphan is adopted and counts: two more are created, not three.
    let owned = wait_for(30, "3 pods", || {
        let pods = pods(&cp, "app=frontend");
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid.as_str()))
        .then_some(pods)
    });
    for pod in &owned {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["name"], "frontend");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        let pod_name = name(pod);
        assert!(
            pod_name == "orphan"
                || (pod_name.starts_with("frontend-") && pod_name.len() == "frontend-".len() + 5),
            "{pod_name}"
        );
    }
    assert!(owned.iter().any(|p| name(p) == "orphan"));
    thread::sleep(Duration::from_secs(1));
    assert_eq!(pods(&cp, "app=frontend").len(), 3, "no extra pods");

    let kubelet = FakeKubelet::start(&cp, Duration::ZERO);
    wait_for(60, "status counts", || {
        let s = cp.kubectl_json(&["get", "rs", "frontend", "-o", "json"])["status"].clone();
        (s["replicas"] == 3
            && s["readyReplicas"] == 3
            && s["availableReplicas"] == 3
            && s["fullyLabeledReplicas"] == 3
            && s["observedGeneration"] == 1)
            .then_some(())
    });

    // A deleted pod is replaced.
    let victim = owned.iter().map(name).find(|n| n != "orphan").unwrap();
    cp.kubectl(&["delete", "pod", &victim]).success();
    wait_for(30, "a replacement pod", || {
        let pods = pods(&cp, "app=frontend");
        (pods.len() == 3 && pods.iter().all(|p| name(p) != victim)).then_some(())
    });

    // Scaling down deletes the surplus.
    cp.kubectl(&["scale", "rs", "frontend", "--replicas=1"])
        .success();
    wait_for(30, "1 pod and its status", || {
        let pods = pods(&cp, "app=frontend");
        let s = cp.kubectl_json(&["get", "rs", "frontend", "-o", "json"])["status"].clone();
        (pods.len() == 1 && s["replicas"] == 1 && s["observedGeneration"] == 2).then_some(())
    });
    drop(kubelet);

    let events = events(&cp);
    for reason in ["SuccessfulCreate", "SuccessfulDelete"] {
        let event = events
            .iter()
            .find(|e| e["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} event in {events:#?}"));
        assert_eq!(event["involvedObject"]["kind"], "ReplicaSet");
        assert_eq!(event["involvedObject"]["name"], "frontend");
        assert_eq!(event["involvedObject"]["uid"], uid.as_str());
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["source"]["component"], "replicaset-controller");
        assert_eq!(event["count"], 1);
        assert!(event["firstTimestamp"].is_string() && event["lastTimestamp"].is_string());
    }
    assert!(events.iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("Created pod: frontend-")
    }));
    let table = cp.kubectl(&["get", "events"]).success();
    assert!(table.contains("SuccessfulCreate"), "{table}");
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: localhost/busybox:1
"#;

fn rollout_status(cp: &ControlPlane, deploy: &str) {
    let out = cp
        .kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{deploy}"),
            "--timeout=90s",
        ])
        .success();
    assert!(
        out.contains(&format!("deployment \"{deploy}\" successfully rolled out")),
        "{out}"
    );
}

fn image_of(object: &Value) -> String {
    object["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn revision(object: &Value) -> String {
    object["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap()
}

fn rs_with_image<'a>(rses: &'a [Value], image: &str) -> &'a Value {
    rses.iter()
        .find(|rs| image_of(rs) == image)
        .unwrap_or_else(|| panic!("no replica set with {image}"))
}

#[test]
fn deployment_rolls_out_rolls_back_scales_and_pauses() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], WEB).success();
    let rs = wait_for(30, "the first replica set", || {
        replicasets(&cp, "app=web").into_iter().next()
    });
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("the hash label")
        .to_owned();
    assert_eq!(name(&rs), format!("web-{hash}"));
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash.as_str()
    );
    assert_eq!(revision(&rs), "1");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    wait_for(30, "4 pods with the hash label", || {
        let pods = pods(&cp, &format!("pod-template-hash={hash}"));
        (pods.len() == 4).then_some(())
    });

    let kubelet = FakeKubelet::start(&cp, Duration::from_millis(300));
    rollout_status(&cp, "web");
    let d = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(revision(&d), "1");
    let available = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Available")
        .unwrap()
        .clone();
    assert_eq!(available["status"], "True");
    assert_eq!(available["reason"], "MinimumReplicasAvailable");

    // A new image: a second replica set; the pods never exceed replicas + maxSurge.
    cp.kubectl(&["set", "image", "deployment/web", "web=localhost/busybox:2"])
        .success();
    let mut most = 0;
    let mut saw_both = false;
    wait_for(120, "the rollout to version 2", || {
        let pods = pods(&cp, "app=web");
        most = most.max(pods.len());
        assert!(pods.len() <= 5, "{} pods during the rollout", pods.len());
        let rses = replicasets(&cp, "app=web");
        let total: i64 = rses.iter().map(replicas).sum();
        assert!(total <= 5, "replica sets want {total} pods");
        if rses.iter().filter(|rs| replicas(rs) > 0).count() == 2 {
            saw_both = true;
        }
        let d = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
        let s = &d["status"];
        (s["updatedReplicas"] == 4
            && s["replicas"] == 4
            && s["availableReplicas"] == 4
            && s["observedGeneration"] == d["metadata"]["generation"])
            .then_some(())
    });
    assert!(saw_both, "old and new replica sets ran side by side");
    rollout_status(&cp, "web");
    let rses = replicasets(&cp, "app=web");
    assert_eq!(rses.len(), 2);
    let v1 = rs_with_image(&rses, "localhost/busybox:1");
    let v2 = rs_with_image(&rses, "localhost/busybox:2");
    assert_eq!((replicas(v1), replicas(v2)), (0, 4));
    assert_eq!((revision(v1), revision(v2)), ("1".into(), "2".into()));
    let v1_name = name(v1);

    let history = cp
        .kubectl(&["rollout", "history", "deployment/web"])
        .success();
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    // Undo: the old template comes back and its replica set is reused, as revision 3.
    cp.kubectl(&["rollout", "undo", "deployment/web"]).success();
    let d = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(image_of(&d), "localhost/busybox:1");
    rollout_status(&cp, "web");
    let rses = replicasets(&cp, "app=web");
    assert_eq!(rses.len(), 2, "no third replica set");
    let v1 = rs_with_image(&rses, "localhost/busybox:1");
    assert_eq!(name(v1), v1_name);
    assert_eq!(revision(v1), "3");
    assert_eq!(replicas(v1), 4);
    assert_eq!(replicas(rs_with_image(&rses, "localhost/busybox:2")), 0);
    wait_for(30, "the deployment's revision", || {
        let d = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
        (revision(&d) == "3").then_some(())
    });

    // Scale.
    cp.kubectl(&["scale", "deployment", "web", "--replicas=2"])
        .success();
    wait_for(60, "2 pods", || {
        let pods = pods(&cp, "app=web");
        let rs = cp.kubectl_json(&["get", "rs", &v1_name, "-o", "json"]);
        (pods.len() == 2 && replicas(&rs) == 2).then_some(())
    });
    rollout_status(&cp, "web");

    // Paused: a template change waits for resume.
    cp.kubectl(&["rollout", "pause", "deployment/web"])
        .success();
    cp.kubectl(&["set", "image", "deployment/web", "web=localhost/busybox:3"])
        .success();
    wait_for(30, "the paused condition", || {
        let d = cp.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused")
            .then_some(())
    });
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        replicasets(&cp, "app=web").len(),
        2,
        "no rollout while paused"
    );
    cp.kubectl(&["rollout", "resume", "deployment/web"])
        .success();
    rollout_status(&cp, "web");
    let rses = replicasets(&cp, "app=web");
    assert_eq!(rses.len(), 3);
    assert_eq!(replicas(rs_with_image(&rses, "localhost/busybox:3")), 2);
    drop(kubelet);

    let events = events(&cp);
    let scaling: Vec<&str> = events
        .iter()
        .filter(|e| e["reason"] == "ScalingReplicaSet")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        scaling.contains(&format!("Scaled up replica set web-{hash} to 4").as_str()),
        "{scaling:#?}"
    );
    assert!(
        scaling
            .iter()
            .any(|m| m.starts_with("Scaled down replica set web-")),
        "{scaling:#?}"
    );
}

const DB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: db
spec:
  replicas: 2
  revisionHistoryLimit: 1
  strategy: {type: Recreate}
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: localhost/busybox:1
"#;

#[test]
fn recreate_removes_old_pods_before_new_ones_and_history_is_pruned() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(&["apply", "-f", "-"], DB).success();
    let kubelet = FakeKubelet::start(&cp, Duration::ZERO);
    rollout_status(&cp, "db");

    for version in ["2", "3"] {
        let image = format!("localhost/busybox:{version}");
        cp.kubectl(&["set", "image", "deployment/db", &format!("db={image}")])
            .success();
        wait_for(120, "the recreate rollout", || {
            let pods = pods(&cp, "app=db");
            let new = pods
                .iter()
                .filter(|p| p["spec"]["containers"][0]["image"] == image.as_str())
                .count();
            let old = pods.len() - new;
            assert!(
                new == 0 || old == 0,
                "old and new pods side by side: {old} old, {new} new"
            );
            let d = cp.kubectl_json(&["get", "deploy", "db", "-o", "json"]);
            let s = &d["status"];
            (new == 2
                && s["updatedReplicas"] == 2
                && s["availableReplicas"] == 2
                && s["observedGeneration"] == d["metadata"]["generation"])
                .then_some(())
        });
        rollout_status(&cp, "db");
    }
    drop(kubelet);

    // Revision 1 is pruned: one old replica set is kept besides the current one.
    let rses = wait_for(30, "history pruning", || {
        let rses = replicasets(&cp, "app=db");
        (rses.len() == 2).then_some(rses)
    });
    let mut revisions: Vec<String> = rses.iter().map(revision).collect();
    revisions.sort();
    assert_eq!(revisions, ["2", "3"]);

    // Scale down, then up, in the events, in that order for each rollout.
    let mut events = events(&cp);
    events.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    });
    let scaling: Vec<String> = events
        .iter()
        .filter(|e| e["reason"] == "ScalingReplicaSet")
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect();
    let ups: Vec<usize> = (0..scaling.len())
        .filter(|&i| scaling[i].starts_with("Scaled up"))
        .collect();
    let downs: Vec<usize> = (0..scaling.len())
        .filter(|&i| scaling[i].starts_with("Scaled down"))
        .collect();
    assert_eq!((ups.len(), downs.len()), (3, 2), "{scaling:#?}");
    assert!(downs[0] < ups[1] && downs[1] < ups[2], "{scaling:#?}");
}
