//! The DNS process's serving loop on 127.0.0.1 and a feed socket in a temporary directory, fed
//! by the agent's side ([`crate::dns::Supervisor`]) as agents come and go.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use serde_json::json;
use tokio::{net::UdpSocket, sync::oneshot};

use super::*;
use crate::{
    dns::Supervisor,
    metrics::{AgentMetrics, RcodeLabels},
};

fn records_with(services: &[(&str, &str)]) -> SharedRecords {
    let mut records = ClusterRecords::default();
    for (name, ip) in services {
        let service = json!({"metadata": {"namespace": "default", "name": name},
                             "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        records.apply_service(&serde_json::from_value(service).unwrap());
    }
    Arc::new(RwLock::new(records))
}

/// Asks `server` for the A records of `name` over UDP: the response code and the addresses.
async fn ask(server: SocketAddr, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut query = Message::query();
    query.metadata.id = rand::random();
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket
        .send_to(&query.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("the DNS server answers")
        .unwrap();
    let response = Message::from_vec(&buf[..len]).unwrap();
    let addresses = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    (response.metadata.response_code, addresses)
}

/// Asks until `name` resolves to `want` (the feed is asynchronous), for at most 5 s.
async fn until_resolves(server: SocketAddr, name: &str, want: &[Ipv4Addr]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, got) = ask(server, name).await;
        if code == ResponseCode::NoError && got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {code} {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn noerror_answers() -> u64 {
    AgentMetrics::global()
        .dns_queries
        .get_or_create(&RcodeLabels {
            rcode: "NOERROR".into(),
        })
        .get()
}

#[tokio::test]
async fn keeps_serving_without_an_agent_and_takes_the_next_agents_records() {
    let run_dir = tempfile::tempdir().unwrap();
    let records: SharedRecords = Arc::new(RwLock::new(ClusterRecords::default()));
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = DnsServer::bind(
        Arc::clone(&records),
        &[localhost],
        Vec::new(),
        Clients::new(["127.0.0.0/8".parse().unwrap()]),
    )
    .await
    .unwrap();
    let dns = server.local_addrs()[0];
    let config = DnsConfig {
        listen: vec![dns],
        upstreams: Vec::new(),
        clients: vec!["127.0.0.0/8".parse().unwrap()],
        cluster_domain: DEFAULT_DOMAIN.into(),
    };
    let layout = Layout::new(run_dir.path());
    std::fs::create_dir_all(&layout.dir).unwrap();
    let hello = Hello {
        build: feed::build_id(),
        process: ProcessId::current().unwrap(),
        config: config.clone(),
    };
    let answered = server.answered();
    tokio::spawn(server.run());
    tokio::spawn(serve_feeds(
        bind_feed(&layout.socket()).unwrap(),
        records,
        answered,
        hello.clone(),
    ));
    // The agent's side: it never starts a process here (the one serving is this test).
    let supervisor = Supervisor::with_executable(
        DnsArgs {
            run_dir: run_dir.path().to_owned(),
            cgroup_parent: None,
            config,
        },
        "/nonexistent/apiary-node-agent".into(),
    );
    let web = "web.default.svc.cluster.local.";
    let after = "after.default.svc.cluster.local.";
    let answers_before = noerror_answers();

    // The first agent feeds its records.
    let connection = supervisor.connect().await.unwrap();
    assert_eq!(connection.hello, hello);
    let first = records_with(&[("web", "10.96.0.20")]);
    let agent = tokio::spawn(supervisor.clone().feed(
        connection,
        Arc::clone(&first),
        std::future::ready(()),
    ));
    until_resolves(dns, web, &[Ipv4Addr::new(10, 96, 0, 20)]).await;
    // Changes follow.
    let service = json!({"metadata": {"namespace": "default", "name": "after"},
                         "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]}});
    first
        .write()
        .unwrap()
        .apply_service(&serde_json::from_value(service).unwrap());
    until_resolves(dns, after, &[Ipv4Addr::new(10, 96, 0, 30)]).await;

    // The agent dies: the names stay.
    agent.abort();
    let _ = agent.await;
    for _ in 0..10 {
        assert_eq!(
            ask(dns, web).await,
            (ResponseCode::NoError, vec![Ipv4Addr::new(10, 96, 0, 20)])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The next agent connects at once, but its records are complete only once it has listed
    // everything: until then the process keeps the old ones.
    let (synced, listed) = oneshot::channel::<()>();
    let second = records_with(&[("web", "10.96.0.21")]);
    let connection = supervisor.connect().await.unwrap();
    let agent = tokio::spawn(supervisor.clone().feed(
        connection,
        Arc::clone(&second),
        async move {
            let _ = listed.await;
        },
    ));
    tokio::time::sleep(feed::SNAPSHOT_INTERVAL * 3).await;
    assert_eq!(
        ask(dns, web).await,
        (ResponseCode::NoError, vec![Ipv4Addr::new(10, 96, 0, 20)])
    );
    synced.send(()).unwrap();
    until_resolves(dns, web, &[Ipv4Addr::new(10, 96, 0, 21)]).await;
    // The second agent's records are the whole truth: `after` is gone with the first.
    assert_eq!(ask(dns, after).await.0, ResponseCode::NXDomain);

    // The answers were counted in the process and reported into the agent's metrics.
    let deadline = tokio::time::Instant::now() + feed::REPORT_INTERVAL * 5;
    while noerror_answers() < answers_before + 12 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NOERROR answers reported: {}",
            noerror_answers() - answers_before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.abort();
}
