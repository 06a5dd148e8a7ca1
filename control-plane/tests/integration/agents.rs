//! The node agents' gRPC channel against a started control plane, with kubectl checking what it
//! wrote.

use crate::support;

use std::time::Duration;

use apiary_agent_api::v1::{
    HeartbeatRequest, NodeReady, ObjectEvent, PodStatusReport, RegisterRequest,
    WatchDataplaneRequest, WatchPodsRequest, object_event::Type,
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use support::ControlPlane;

async fn client(cp: &ControlPlane) -> apiary_agent_api::Client {
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let token = cp.token();
    let ca = std::fs::read_to_string(cp.data_path().join("pki/ca.crt")).unwrap();
    apiary_agent_api::connect(server, &ca, &token)
        .await
        .unwrap()
}

fn node(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" } },
        "status": {
            "capacity": { "cpu": "2", "memory": "4Gi", "pods": "110" },
            "allocatable": { "cpu": "2", "memory": "4Gi", "pods": "110" },
            "addresses": [{ "type": "InternalIP", "address": "127.123.0.1" }],
        },
    }))
    .unwrap()
}

async fn next(stream: &mut tonic::Streaming<ObjectEvent>) -> ObjectEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_assigns_each_node_its_own_pod_cidr_and_keeps_it() {
    let cp = ControlPlane::start();
    let mut agent = client(&cp).await;
    let n1 = agent
        .register(RegisterRequest {
            node_json: node("n1"),
        })
        .await
        .unwrap()
        .into_inner();
    let n2 = agent
        .register(RegisterRequest {
            node_json: node("n2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n1.pod_cidr, "10.244.0.0/24");
    assert_eq!(n2.pod_cidr, "10.244.1.0/24");
    let again = agent
        .register(RegisterRequest {
            node_json: node("n1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.pod_cidr, "10.244.0.0/24",
        "re-registering keeps the CIDR"
    );

    let nodes = cp.kubectl(&["get", "nodes"]).success();
    assert!(nodes.contains("n1") && nodes.contains("Ready"), "{nodes}");
    let n1: Value = cp.kubectl_json(&["get", "node", "n1", "-o", "json"]);
    assert_eq!(n1["status"]["capacity"]["pods"], "110");
    assert_eq!(n1["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
}

fn ready_condition(cp: &ControlPlane, node: &str) -> (String, String, String) {
    let node: Value = cp.kubectl_json(&["get", "node", node, "-o", "json"]);
    let conditions = node["status"]["conditions"].as_array().unwrap();
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    let field = |k: &str| ready[k].as_str().unwrap_or_default().to_owned();
    (field("status"), field("reason"), field("message"))
}

/// An agent registers NotReady and says when it is Ready (data plane attached, first sync done)
/// or stopped; heartbeats that say nothing (hollow nodes) leave the condition alone.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_are_ready_when_their_agent_says_so() {
    let cp = ControlPlane::start();
    let mut agent = client(&cp).await;
    let mut object: Value = serde_json::from_slice(&node("n1")).unwrap();
    object["status"]["conditions"] = json!([{
        "type": "Ready", "status": "False", "reason": "KubeletNotReady",
        "message": "the node agent is starting: the data plane is not attached yet",
    }]);
    agent
        .register(RegisterRequest {
            node_json: serde_json::to_vec(&object).unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(
        ready_condition(&cp, "n1"),
        (
            "False".into(),
            "KubeletNotReady".into(),
            "the node agent is starting: the data plane is not attached yet".into()
        )
    );
    let heartbeat = |ready: Option<(bool, &str, &str)>| HeartbeatRequest {
        node_name: "n1".into(),
        ready: ready.map(|(ready, reason, message)| NodeReady {
            ready,
            reason: reason.into(),
            message: message.into(),
        }),
    };
    agent.heartbeat(heartbeat(None)).await.unwrap();
    assert_eq!(ready_condition(&cp, "n1").0, "False", "a silent heartbeat");
    agent
        .heartbeat(heartbeat(Some((true, "KubeletReady", "ready"))))
        .await
        .unwrap();
    assert_eq!(
        ready_condition(&cp, "n1"),
        ("True".into(), "KubeletReady".into(), "ready".into())
    );
    agent
        .heartbeat(heartbeat(Some((
            false,
            "KubeletNotReady",
            "the node agent stopped: no cgroup v2 hierarchy is mounted",
        ))))
        .await
        .unwrap();
    assert_eq!(
        ready_condition(&cp, "n1"),
        (
            "False".into(),
            "KubeletNotReady".into(),
            "the node agent stopped: no cgroup v2 hierarchy is mounted".into()
        )
    );
    // A node that was deleted: the agent registers it again.
    let err = agent
        .heartbeat(HeartbeatRequest {
            node_name: "gone".into(),
            ready: Some(NodeReady::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_renew_the_node_lease() {
    let cp = ControlPlane::start();
    let mut agent = client(&cp).await;
    let reply = agent
        .heartbeat(HeartbeatRequest {
            node_name: "n1".into(),
            ready: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.lease_duration_seconds, 40);
    let first: Value =
        cp.kubectl_json(&["-n", "kube-node-lease", "get", "lease", "n1", "-o", "json"]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    agent
        .heartbeat(HeartbeatRequest {
            node_name: "n1".into(),
            ready: None,
        })
        .await
        .unwrap();
    let second: Value =
        cp.kubectl_json(&["-n", "kube-node-lease", "get", "lease", "n1", "-o", "json"]);
    assert_eq!(second["spec"]["holderIdentity"], "n1");
    assert_ne!(first["spec"]["renewTime"], second["spec"]["renewTime"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_sees_only_its_pods_and_reports_their_status() {
    let cp = ControlPlane::start();
    let mut agent = client(&cp).await;
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: localhost/busybox:latest\n"
        )
    };
    cp.kubectl_stdin(&["apply", "-f", "-"], &pod("before", "n1"))
        .success();
    let mut pods = agent
        .watch_pods(WatchPodsRequest {
            node_name: "n1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut pods).await;
    assert_eq!(first.r#type, Type::Added as i32);
    let before: Value = serde_json::from_slice(&first.object_json).unwrap();
    assert_eq!(before["metadata"]["name"], "before");
    assert_eq!(next(&mut pods).await.r#type, Type::Synced as i32);

    cp.kubectl_stdin(&["apply", "-f", "-"], &pod("elsewhere", "n2"))
        .success();
    cp.kubectl_stdin(&["apply", "-f", "-"], &pod("after", "n1"))
        .success();
    let added: Value = serde_json::from_slice(&next(&mut pods).await.object_json).unwrap();
    assert_eq!(
        added["metadata"]["name"], "after",
        "n2's pod is not n1's business"
    );

    agent
        .report_pod_status(PodStatusReport {
            namespace: "default".into(),
            name: "after".into(),
            uid: added["metadata"]["uid"].as_str().unwrap().into(),
            status_json: serde_json::to_vec(&json!({
                "phase": "Running", "podIP": "10.244.0.7", "hostIP": "127.123.0.1",
                "containerStatuses": [{ "name": "c", "ready": true, "restartCount": 0,
                    "image": "localhost/busybox:latest", "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } } }],
            }))
            .unwrap(),
        })
        .await
        .unwrap();
    let wide = cp.kubectl(&["get", "pod", "after", "-o", "wide"]).success();
    assert!(
        wide.contains("Running") && wide.contains("10.244.0.7") && wide.contains("1/1"),
        "{wide}"
    );
    let modified = next(&mut pods).await;
    assert_eq!(modified.r#type, Type::Modified as i32);

    let stale = agent
        .report_pod_status(PodStatusReport {
            namespace: "default".into(),
            name: "after".into(),
            uid: "not-this-pod".into(),
            status_json: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_plane_stream_carries_services() {
    let cp = ControlPlane::start();
    let mut agent = client(&cp).await;
    let mut objects = agent
        .watch_dataplane(WatchDataplaneRequest {
            kinds: vec!["Service".into()],
        })
        .await
        .unwrap()
        .into_inner();
    // The list first: the Services every cluster has (cluster DNS), then the end of the list.
    let mut listed = Vec::new();
    loop {
        let event = next(&mut objects).await;
        if event.r#type == Type::Synced as i32 {
            break;
        }
        let svc: Value = serde_json::from_slice(&event.object_json).unwrap();
        listed.push(format!(
            "{}/{}",
            svc["metadata"]["namespace"].as_str().unwrap(),
            svc["metadata"]["name"].as_str().unwrap()
        ));
    }
    assert_eq!(listed, ["kube-system/kube-dns"]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n",
    )
    .success();
    let event = next(&mut objects).await;
    assert_eq!(event.kind, "Service");
    let svc: Value = serde_json::from_slice(&event.object_json).unwrap();
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_the_token_are_refused() {
    let cp = ControlPlane::start();
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let ca = std::fs::read_to_string(cp.data_path().join("pki/ca.crt")).unwrap();
    let mut agent = apiary_agent_api::connect(server, &ca, "wrong")
        .await
        .unwrap();
    let err = agent
        .heartbeat(HeartbeatRequest {
            node_name: "n1".into(),
            ready: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
}
