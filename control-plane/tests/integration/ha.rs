//! Two control planes of one cluster on one etcd: agents that know both go on through the live
//! one when the other dies (gRPC and HTTP), and `default/kubernetes` has an endpoint per live
//! control plane.

use crate::support;

use std::time::{Duration, Instant};

use apiary_agent_api::{
    Credential,
    v1::{HeartbeatRequest, NodeReady, RegisterRequest},
};
use apiary_node_agent::{api_client::ApiClient, kubeconfig::Endpoint};
use serde_json::{Value, json};
use support::{ControlPlane, Etcd};

fn pair(etcd: &Etcd) -> (ControlPlane, ControlPlane) {
    let args = |id| {
        vec![
            "--etcd-endpoints",
            &etcd.endpoint,
            "--identity",
            id,
            // Pods would reach them at their loopback address: enough for the Endpoints.
            "--advertise-address",
            "127.0.0.1",
        ]
    };
    let first = ControlPlane::start_with(&args("cp-1"));
    let second = ControlPlane::start_joining(&first, &args("cp-2"));
    (first, second)
}

fn server(cp: &ControlPlane) -> String {
    format!("https://{}", cp.server_addr())
}

fn ca(cp: &ControlPlane) -> String {
    std::fs::read_to_string(cp.data_path().join("pki/ca.crt")).unwrap()
}

fn node(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": "127.123.0.1"}],
        },
    }))
    .unwrap()
}

fn heartbeat(name: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        node_name: name.to_owned(),
        ready: Some(NodeReady {
            ready: true,
            reason: "KubeletReady".into(),
            message: "ok".into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_knows_both_api_servers_goes_on_through_the_live_one() {
    let etcd = Etcd::start();
    let (mut first, second) = pair(&etcd);
    let token = first.token();
    assert_eq!(token, second.token(), "one cluster, one admin token");
    let servers = [server(&first), server(&second)];
    let mut agent = apiary_agent_api::connect_any(&servers, &ca(&first), Credential::Token(&token))
        .await
        .unwrap();
    agent
        .register(RegisterRequest {
            node_json: node("n1"),
        })
        .await
        .unwrap();
    for _ in 0..5 {
        agent.heartbeat(heartbeat("n1")).await.unwrap();
    }
    // The HTTP client: the first server first.
    let mut endpoint = Endpoint::from_kubeconfig(&first.node_kubeconfig()).unwrap();
    endpoint.token = token.clone();
    let http = ApiClient::new(&endpoint.clone().with_more_servers(&[server(&second)])).unwrap();
    let only_first = ApiClient::new(&endpoint).unwrap();
    let path = "/api/v1/nodes/n1";
    assert!(matches!(
        http.get::<Value>(path).await.unwrap(),
        apiary_node_agent::api_client::Found::Object(_)
    ));

    first.kill();
    // Calls the balancer sends to the dead server fail until its probe (every second) takes
    // it out; then every call goes through the live one.
    let killed = Instant::now();
    let mut failed = 0;
    let mut in_a_row = 0;
    let mut streak_began = killed;
    while in_a_row < 50 {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "heartbeats did not go on through the live server ({failed} failed)"
        );
        match agent.heartbeat(heartbeat("n1")).await {
            Ok(_) => in_a_row += 1,
            Err(_) => {
                failed += 1;
                in_a_row = 0;
                streak_began = Instant::now();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let outage = streak_began.duration_since(killed);
    eprintln!("{failed} heartbeats failed in the {outage:?} after the first server died");
    assert!(
        outage < Duration::from_secs(3),
        "calls failed for {outage:?} after a server died"
    );

    let node = match http.get::<Value>(path).await.unwrap() {
        apiary_node_agent::api_client::Found::Object(node) => node,
        apiary_node_agent::api_client::Found::Missing => panic!("n1 is gone"),
    };
    assert_eq!(node["metadata"]["name"], "n1");
    assert!(
        only_first.get::<Value>(path).await.is_err(),
        "without the second server, the dead first one is all there is"
    );
}

fn endpoint_ports(cp: &ControlPlane) -> Vec<u64> {
    let out = cp
        .kubectl(&["get", "endpoints", "kubernetes", "-o", "json"])
        .success();
    let endpoints: Value = serde_json::from_str(&out).unwrap();
    let mut ports: Vec<u64> = endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["ports"][0]["port"].as_u64())
        .collect();
    ports.sort_unstable();
    ports
}

#[test]
fn every_live_control_plane_is_an_endpoint_of_default_kubernetes() {
    let etcd = Etcd::start();
    let (mut first, second) = pair(&etcd);
    let mut both = vec![
        u64::from(first.server_addr().port()),
        u64::from(second.server_addr().port()),
    ];
    both.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(20);
    while endpoint_ports(&second) != both {
        assert!(
            Instant::now() < deadline,
            "endpoints: {:?}",
            endpoint_ports(&second)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let leases = second
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "leases",
            "-l",
            "apiserver.kubernetes.io/identity=kube-apiserver",
            "-o",
            "name",
        ])
        .success();
    assert!(
        leases.contains("lease.coordination.k8s.io/apiserver-cp-1")
            && leases.contains("lease.coordination.k8s.io/apiserver-cp-2"),
        "{leases}"
    );

    first.kill();
    let only = vec![u64::from(second.server_addr().port())];
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint_ports(&second) != only {
        assert!(
            Instant::now() < deadline,
            "endpoints: {:?}",
            endpoint_ports(&second)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
