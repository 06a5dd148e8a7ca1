//! End-to-end: the server on 127.0.0.1, asked by hickory's client over UDP and TCP, forwarding
//! to a second hickory server standing in for the node's resolver.

use std::time::Instant as StdInstant;

use hickory_net::{
    client::{Client, ClientHandle},
    runtime::TokioRuntimeProvider,
    tcp::TcpClientStream,
    udp::UdpClientStream,
};
use hickory_proto::{
    op::DnsResponse,
    rr::{
        RData, RecordType,
        rdata::{A, PTR},
    },
};
use serde_json::json;

use super::*;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn local() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn records() -> SharedRecords {
    let mut records = ClusterRecords::default();
    let web = json!({"metadata": {"namespace": "default", "name": "web"},
                     "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}});
    records.apply_service(&serde_json::from_value(web).unwrap());
    Arc::new(RwLock::new(records))
}

/// Starts the cluster DNS server on a free port of 127.0.0.1, for loopback clients; returns
/// that address.
async fn start(records: SharedRecords, upstreams: Vec<SocketAddr>) -> SocketAddr {
    start_for(records, upstreams, loopback()).await
}

fn loopback() -> Clients {
    Clients::new(["127.0.0.0/8".parse().unwrap()])
}

async fn start_for(
    records: SharedRecords,
    upstreams: Vec<SocketAddr>,
    clients: Clients,
) -> SocketAddr {
    let server = DnsServer::bind(records, &[local()], upstreams, clients)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0);
    tokio::spawn(server.run());
    addr
}

async fn udp_client(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(CLIENT_TIMEOUT))
        .build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);
    client
}

async fn tcp_client(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (stream, handle) = TcpClientStream::new(
        server,
        None,
        Some(CLIENT_TIMEOUT),
        TokioRuntimeProvider::new(),
    );
    let (client, background) = Client::<TokioRuntimeProvider>::new(stream.await.unwrap(), handle);
    tokio::spawn(background);
    client
}

async fn query(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    rtype: RecordType,
) -> DnsResponse {
    client
        .query(Name::from_ascii(name).unwrap(), DNSClass::IN, rtype)
        .await
        .unwrap()
}

fn a_records(response: &DnsResponse) -> Vec<Ipv4Addr> {
    response
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        })
        .collect()
}

/// The node's resolver: `example.com` A is 192.0.2.80 asked over UDP and 192.0.2.81 over TCP
/// (so a test can tell which transport was forwarded), `1.2.3.4` has a PTR, the rest is
/// NXDOMAIN.
struct Upstream;

#[async_trait]
impl RequestHandler for Upstream {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let query = &request.queries.queries()[0];
        let name = Name::from(query.name().clone()).to_lowercase().to_ascii();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let owner = Name::from(query.name().clone());
        let data = match (name.as_str(), query.query_type()) {
            ("example.com.", RecordType::A) if request.protocol().is_stream() => {
                Some(RData::A(A(Ipv4Addr::new(192, 0, 2, 81))))
            }
            ("example.com.", RecordType::A) => Some(RData::A(A(Ipv4Addr::new(192, 0, 2, 80)))),
            ("4.3.2.1.in-addr.arpa.", RecordType::PTR) => {
                Some(RData::PTR(PTR(Name::from_ascii("one.example.").unwrap())))
            }
            _ => None,
        };
        if data.is_none() {
            metadata.response_code = ResponseCode::NXDomain;
        }
        let answers: Vec<Record> = data
            .map(|d| Record::from_rdata(owner, 300, d))
            .into_iter()
            .collect();
        let response = MessageResponseBuilder::new(&request.queries, request.edns.as_ref()).build(
            metadata,
            answers.iter(),
            [],
            [],
            [],
        );
        response_handle.send_response(response).await.unwrap()
    }
}

async fn start_upstream() -> SocketAddr {
    let (udp, tcp) = bind_pair(local()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let mut server = Server::new(Upstream);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 32);
    tokio::spawn(async move { server.block_until_done().await });
    addr
}

/// A port nobody listens on: questions sent there are refused at once.
fn dead_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind(local()).unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn cluster_names_are_answered_authoritatively_over_udp_and_tcp() {
    let server = start(records(), Vec::new()).await;
    for mut client in [udp_client(server).await, tcp_client(server).await] {
        let response = query(&mut client, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&response), [Ipv4Addr::new(10, 96, 0, 10)]);
        assert!(response.metadata.authoritative);
        assert!(response.metadata.recursion_available);
        assert_eq!(response.answers[0].ttl, 5);
        assert_eq!(response.queries.len(), 1, "the question is echoed");
        assert_eq!(
            response.queries[0].name().to_ascii(),
            "web.default.svc.cluster.local."
        );
        let edns = response
            .edns
            .as_ref()
            .expect("hickory's client asks with EDNS");
        assert!(edns.max_payload() <= EDNS_PAYLOAD);

        let srv = query(
            &mut client,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(srv.answers.len(), 1);
        assert_eq!(
            srv.answers[0].data.to_string(),
            "0 100 80 web.default.svc.cluster.local."
        );
        let glue: Vec<String> = srv
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        assert_eq!(glue, ["web.default.svc.cluster.local. 10.96.0.10"]);

        let missing = query(
            &mut client,
            "nope.default.svc.cluster.local.",
            RecordType::A,
        )
        .await;
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert!(missing.answers.is_empty());
        assert_eq!(missing.authorities.len(), 1);
        assert_eq!(missing.authorities[0].record_type(), RecordType::SOA);

        let no_data = query(
            &mut client,
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await;
        assert_eq!(no_data.metadata.response_code, ResponseCode::NoError);
        assert!(no_data.answers.is_empty());
        assert_eq!(no_data.authorities[0].record_type(), RecordType::SOA);
    }
}

#[tokio::test]
async fn updates_are_answered_by_the_next_question() {
    let records = records();
    let server = start(records.clone(), Vec::new()).await;
    let mut client = udp_client(server).await;
    let name = "api.team.svc.cluster.local.";
    let before = query(&mut client, name, RecordType::A).await;
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);
    let api = json!({"metadata": {"namespace": "team", "name": "api"}, "spec": {"clusterIP": "10.96.0.7"}});
    records
        .write()
        .unwrap()
        .apply_service(&serde_json::from_value(api).unwrap());
    let after = query(&mut client, name, RecordType::A).await;
    assert_eq!(a_records(&after), [Ipv4Addr::new(10, 96, 0, 7)]);
}

#[tokio::test]
async fn other_names_are_forwarded_over_the_clients_transport() {
    let upstream = start_upstream().await;
    let server = start(records(), vec![upstream]).await;

    let mut udp = udp_client(server).await;
    let response = query(&mut udp, "Example.COM.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&response), [Ipv4Addr::new(192, 0, 2, 80)]);
    assert!(!response.metadata.authoritative, "not ours");
    assert_eq!(
        response.answers[0].ttl, 300,
        "relayed as the upstream said it"
    );
    assert_eq!(
        response.queries[0].name().to_ascii(),
        "Example.COM.",
        "the client's question"
    );

    let mut tcp = tcp_client(server).await;
    let response = query(&mut tcp, "example.com.", RecordType::A).await;
    assert_eq!(
        a_records(&response),
        [Ipv4Addr::new(192, 0, 2, 81)],
        "forwarded over TCP"
    );

    let missing = query(&mut udp, "missing.example.", RecordType::A).await;
    assert_eq!(
        missing.metadata.response_code,
        ResponseCode::NXDomain,
        "relayed as is"
    );

    // The reverse name of an address the cluster does not have is the upstream's too.
    let ptr = query(&mut udp, "4.3.2.1.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptr.answers[0].data.to_string(), "one.example.");
}

#[tokio::test]
async fn the_first_upstream_that_answers_is_used() {
    let upstream = start_upstream().await;
    let server = start(records(), vec![dead_port(), upstream]).await;
    let mut client = udp_client(server).await;
    let response = query(&mut client, "example.com.", RecordType::A).await;
    assert_eq!(a_records(&response), [Ipv4Addr::new(192, 0, 2, 80)]);
}

#[tokio::test]
async fn servfail_when_no_upstream_answers() {
    // Refused at once.
    let server = start(records(), vec![dead_port()]).await;
    let mut client = udp_client(server).await;
    let response = query(&mut client, "example.com.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);

    // Silent: the client hears SERVFAIL once the forwarding time is up, not its own timeout.
    let silent = UdpSocket::bind(local()).await.unwrap();
    let server = start(records(), vec![silent.local_addr().unwrap()]).await;
    let mut client = udp_client(server).await;
    let started = StdInstant::now();
    let response = query(&mut client, "example.com.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    let took = started.elapsed();
    assert!(
        took >= FORWARD_TIMEOUT / 2 && took < CLIENT_TIMEOUT,
        "{took:?}"
    );

    // No upstream at all.
    let server = start(records(), Vec::new()).await;
    let mut client = tcp_client(server).await;
    let response = query(&mut client, "example.com.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn an_upstream_that_is_the_server_itself_is_not_asked() {
    // A free port, then the server on it with itself as upstream.
    let (probe_udp, probe_tcp) = bind_pair(local()).await.unwrap();
    let addr = probe_udp.local_addr().unwrap();
    drop((probe_udp, probe_tcp));
    let server = DnsServer::bind(records(), &[addr], vec![addr], loopback())
        .await
        .unwrap();
    tokio::spawn(server.run());
    let mut client = udp_client(addr).await;
    let started = StdInstant::now();
    let response = query(&mut client, "example.com.", RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < FORWARD_TIMEOUT / 2,
        "answered without forwarding"
    );
}

#[test]
fn loops_are_recognised_through_wildcard_listeners() {
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(is_same_server(at("127.0.0.1:53"), at("127.0.0.1:53")));
    assert!(is_same_server(at("0.0.0.0:53"), at("127.0.0.1:53")));
    assert!(
        is_same_server(at("0.0.0.0:53"), at("127.0.0.53:53")),
        "all of 127/8 is ours"
    );
    assert!(!is_same_server(at("0.0.0.0:53"), at("127.0.0.1:5353")));
    assert!(!is_same_server(at("127.0.0.1:53"), at("127.0.0.2:53")));
    // TEST-NET-1 is nobody's local address.
    assert!(!is_same_server(at("0.0.0.0:53"), at("192.0.2.1:53")));
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let records = records();
    {
        let mut records = records.write().unwrap();
        let headless = json!({"metadata": {"namespace": "default", "name": "many"},
                              "spec": {"clusterIP": "None"}});
        records.apply_service(&serde_json::from_value(headless).unwrap());
        let endpoints: Vec<_> = (0..200)
            .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 100, i % 100 + 1)]}))
            .collect();
        let slice = json!({"metadata": {"namespace": "default", "name": "many-1",
                                        "labels": {"kubernetes.io/service-name": "many"}},
                           "addressType": "IPv4", "endpoints": endpoints});
        records.apply_endpoint_slice(&serde_json::from_value(slice).unwrap());
    }
    let server = start(records, Vec::new()).await;
    let name = "many.default.svc.cluster.local.";
    let over_udp = query(&mut udp_client(server).await, name, RecordType::A).await;
    assert!(
        over_udp.metadata.truncation,
        "the client must retry over TCP"
    );
    assert!(over_udp.answers.len() < 200);
    let over_tcp = query(&mut tcp_client(server).await, name, RecordType::A).await;
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(a_records(&over_tcp).len(), 200);
}

#[tokio::test]
async fn a_slow_upstream_does_not_hold_up_cluster_answers() {
    let silent = UdpSocket::bind(local()).await.unwrap();
    let server = start(records(), vec![silent.local_addr().unwrap()]).await;
    let mut slow_client = udp_client(server).await;
    let slow =
        tokio::spawn(async move { query(&mut slow_client, "example.com.", RecordType::A).await });
    // Let the slow question reach the server first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = StdInstant::now();
    let response = query(
        &mut udp_client(server).await,
        "web.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(a_records(&response), [Ipv4Addr::new(10, 96, 0, 10)]);
    assert!(
        started.elapsed() < FORWARD_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    assert!(
        !slow.is_finished(),
        "the forwarded question is still waiting"
    );
    assert_eq!(
        slow.await.unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
}

/// Sends `message` over plain UDP and decodes the reply: for questions hickory's client won't ask.
async fn raw_exchange(server: SocketAddr, message: &Message) -> Message {
    let socket = UdpSocket::bind(local()).await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let len = timeout(CLIENT_TIMEOUT, socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

#[tokio::test]
async fn unsupported_requests_get_the_matching_error() {
    let server = start(records(), Vec::new()).await;
    let question = || {
        let mut message = Message::query();
        message.metadata.id = 4321;
        message.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        message
    };

    let mut edns1 = question();
    let mut edns = Edns::new();
    edns.set_version(1);
    edns1.set_edns(edns);
    let response = raw_exchange(server, &edns1).await;
    assert_eq!(response.metadata.id, 4321);
    // 16 decodes as BADSIG, its TSIG twin.
    assert_eq!(
        u16::from(response.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(response.answers.is_empty());

    let mut update = question();
    update.metadata.op_code = OpCode::Update;
    let response = raw_exchange(server, &update).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NotImp);

    // Without EDNS: no OPT record in the answer either.
    let plain = raw_exchange(server, &question()).await;
    assert_eq!(plain.metadata.response_code, ResponseCode::NoError);
    assert!(plain.edns.is_none());
    assert_eq!(plain.answers.len(), 1);
}

#[tokio::test]
async fn only_the_clients_it_serves_get_answers() {
    // Answers 127.0.0.1 only; a question from 127.0.0.2 (another machine, for the server) is
    // refused, cluster names and forwarding alike.
    let server = start_for(
        records(),
        Vec::new(),
        Clients::new(["127.0.0.1/32".parse().unwrap()]),
    )
    .await;
    let ask = |from: Ipv4Addr| async move {
        let mut message = Message::query();
        message.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        message.metadata.id = 7;
        let socket = tokio::net::UdpSocket::bind((from, 0)).await.unwrap();
        socket
            .send_to(&message.to_vec().unwrap(), server)
            .await
            .unwrap();
        let mut buffer = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(CLIENT_TIMEOUT, socket.recv_from(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        Message::from_vec(&buffer[..n]).unwrap()
    };
    let allowed = ask(Ipv4Addr::LOCALHOST).await;
    assert_eq!(allowed.metadata.response_code, ResponseCode::NoError);
    assert_eq!(allowed.answers.len(), 1);
    let stranger = ask(Ipv4Addr::new(127, 0, 0, 2)).await;
    assert_eq!(stranger.metadata.response_code, ResponseCode::Refused);
    assert!(stranger.answers.is_empty());
}
