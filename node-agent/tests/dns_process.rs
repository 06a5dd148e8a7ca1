//! The cluster DNS process as the agent runs it: `apiary-node-agent dns` started detached by
//! the agent's supervisor on 127.0.0.1, kept by the next agent, replaced when its configuration
//! changes, and stopped. No root needed (no cgroup, an unprivileged port).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use apiary_node_agent::dns::{
    ClusterRecords, DnsArgs, DnsConfig, Supervisor, standalone::Layout, supervisor::stop,
};
use apiary_runtime::state::ProcessId;
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

/// A port of 127.0.0.1 free for UDP and TCP (as the agent's node address, port 53, would be).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn ask(server: SocketAddr, name: &str) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut query = Message::query();
    query.metadata.id = 7;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&query.to_vec().unwrap(), server).unwrap();
    let mut buf = vec![0; 4096];
    let len = socket.recv(&mut buf).ok()?;
    let response = Message::from_vec(&buf[..len]).unwrap();
    let addresses = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Some((response.metadata.response_code, addresses))
}

fn pid_of(run_dir: &Path) -> ProcessId {
    serde_json::from_slice(&std::fs::read(Layout::new(run_dir).pid_file()).unwrap()).unwrap()
}

/// Kills whatever DNS process the test left, even when it fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // On a thread of its own: it is dropped inside the test's runtime.
        let layout = Layout::new(&self.0);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(stop(&layout, None))
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_process_outlives_its_agent_and_is_kept_replaced_and_stopped() {
    let run_dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(run_dir.path().to_owned());
    let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let args = DnsArgs {
        run_dir: run_dir.path().to_owned(),
        cgroup_parent: None,
        config: DnsConfig {
            listen: vec![dns],
            upstreams: Vec::new(),
            clients: vec!["127.0.0.0/8".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
        },
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_apiary-node-agent"));
    let mut records = ClusterRecords::default();
    let web = serde_json::json!({"metadata": {"namespace": "default", "name": "web"},
                                 "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}});
    records.apply_service(&serde_json::from_value(web).unwrap());
    let records = Arc::new(RwLock::new(records));
    let name = "web.default.svc.cluster.local.";
    let resolved = Some((ResponseCode::NoError, vec![Ipv4Addr::new(10, 96, 0, 20)]));

    // The first agent finds nothing, starts the process and feeds it.
    let supervisor = Supervisor::with_executable(args.clone(), exe.clone());
    let connection = supervisor.connect_or_start().await.unwrap();
    let first = connection.hello.process;
    assert_eq!(pid_of(run_dir.path()), first);
    let agent =
        tokio::spawn(supervisor.feed(connection, Arc::clone(&records), std::future::ready(())));
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::task::block_in_place(|| ask(dns, name)) != resolved {
        assert!(Instant::now() < deadline, "{name} never resolved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The agent goes away: the process keeps answering.
    agent.abort();
    let _ = agent.await;
    for _ in 0..5 {
        assert_eq!(tokio::task::block_in_place(|| ask(dns, name)), resolved);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The next agent of this build, with the same configuration, keeps it.
    let supervisor = Supervisor::with_executable(args.clone(), exe.clone());
    let kept = supervisor.connect_or_start().await.unwrap();
    assert_eq!(kept.hello.process, first, "the running process is kept");
    drop(kept);

    // An agent that serves with another configuration replaces it.
    let mut other = args.clone();
    other.config.cluster_domain = "other.local".into();
    let replaced = Supervisor::with_executable(other, exe)
        .connect_or_start()
        .await
        .unwrap();
    let second = replaced.hello.process;
    assert_ne!(second, first);
    assert!(!first.alive(), "the replaced process is gone");
    drop(replaced);
    // It serves its own configuration: `cluster.local` is no longer the cluster's domain, and
    // with no upstream to forward to, the question fails.
    assert_eq!(
        tokio::task::block_in_place(|| ask(dns, name)).map(|a| a.0),
        Some(ResponseCode::ServFail)
    );

    // Stopping ends it and removes its files.
    let problems = stop(&Layout::new(run_dir.path()), None).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!second.alive());
    assert!(tokio::task::block_in_place(|| ask(dns, name)).is_none());
}
