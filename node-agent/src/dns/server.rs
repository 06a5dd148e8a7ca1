//! The cluster DNS server: answers cluster names from [`ClusterRecords`] and forwards every other
//! question to the node's own resolvers, over UDP and TCP.
//!
//! Pods get this server as their only nameserver (`dnsPolicy: ClusterFirst`), so it must also
//! resolve the outside world: like CoreDNS's `forward` plugin it relays the client's message
//! unchanged (EDNS options, DO and CD bits included) to the first upstream that answers, over
//! the transport the client used, and relays the answer back. No cache: cluster answers are
//! computed from memory and upstream answers are cached by the upstream resolver.

use std::{
    collections::BTreeMap,
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, Name, Record},
};
use hickory_server::{
    Server,
    net::{NetError, runtime::Time},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    time::{Instant, timeout},
};
use tracing::{debug, warn};

use super::records::{Answer, ClusterRecords};

/// The records the server answers from, updated by whoever watches the API. Writers hold the
/// lock only to apply one object; queries hold it only to compute one answer.
pub type SharedRecords = Arc<RwLock<ClusterRecords>>;

/// How long a forwarded question may take, all upstreams together, before the client gets
/// SERVFAIL (the stub resolver in the pod retries after 5 s by default).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The least time one upstream gets before the next is tried.
const MIN_UPSTREAM_TIMEOUT: Duration = Duration::from_millis(500);

/// Idle TCP connections from clients are closed after this long.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Our EDNS UDP payload size (the DNS flag day 2020 value, which avoids IP fragmentation).
const EDNS_PAYLOAD: u16 = 1232;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listen address could not be bound (in use, or not ours). Not retryable as such.
    #[error("binding the DNS server to {addr} ({protocol}): {source}")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: io::Error,
    },
    /// A listener failed while serving.
    #[error("serving DNS: {0}")]
    Serve(#[source] NetError),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many answers a server gave since it started, by response code as CoreDNS labels them
/// (`coredns_dns_responses_total{rcode}`). Counted here rather than in the agent's metrics: the
/// server runs in a process of its own ([`super::standalone`]), which reports them to the agent.
#[derive(Clone, Debug, Default)]
pub struct AnswerCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl AnswerCounts {
    fn count(&self, rcode: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(rcode)
            .or_default() += 1;
    }

    /// The counts so far.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A DNS server bound to its listen addresses, not yet running.
pub struct DnsServer {
    server: Server<ClusterDns>,
    local_addrs: Vec<SocketAddr>,
    answered: AnswerCounts,
}

impl fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addrs", &self.local_addrs)
            .finish()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on every address of `listen`. Port 0 picks a free port, the same one
    /// for UDP and TCP. Upstreams that are one of these addresses are dropped: forwarding to
    /// ourselves would loop.
    pub async fn bind(
        records: SharedRecords,
        listen: &[SocketAddr],
        upstreams: Vec<SocketAddr>,
        clients: Clients,
    ) -> Result<Self> {
        let mut server_sockets = Vec::new();
        let mut local_addrs = Vec::new();
        for addr in listen {
            let (udp, tcp) = bind_pair(*addr).await?;
            local_addrs.push(udp.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                protocol: "udp",
                source,
            })?);
            server_sockets.push((udp, tcp));
        }
        let upstreams: Vec<SocketAddr> = upstreams
            .into_iter()
            .filter(|u| {
                let looping = local_addrs.iter().any(|l| is_same_server(*l, *u));
                if looping {
                    warn!(upstream = %u, "not forwarding to an address of the cluster DNS server itself");
                }
                !looping
            })
            .collect();
        let answered = AnswerCounts::default();
        let mut server = Server::new(ClusterDns {
            records,
            upstreams,
            clients,
            answered: answered.clone(),
        });
        for (udp, tcp) in server_sockets {
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, 32);
        }
        Ok(Self {
            server,
            local_addrs,
            answered,
        })
    }

    /// The server's answer counts, which go on counting while it runs.
    pub fn answered(&self) -> AnswerCounts {
        self.answered.clone()
    }

    /// The bound addresses (UDP and TCP share each), in the order of `listen`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Serves until a listener fails.
    pub async fn run(mut self) -> Result<()> {
        self.server.block_until_done().await.map_err(Error::Serve)
    }
}

/// Binds `listen` (UDP and TCP) and serves cluster names from `records`, forwarding the rest to
/// `upstreams` (see [`super::upstreams_from_resolv_conf`]). Returns only on error.
pub async fn serve(
    records: SharedRecords,
    listen: Vec<SocketAddr>,
    upstreams: Vec<SocketAddr>,
    clients: Clients,
) -> Result<()> {
    DnsServer::bind(records, &listen, upstreams, clients)
        .await?
        .run()
        .await
}

/// Binds UDP then TCP on the same address; with port 0, retries until the port UDP got is free
/// for TCP as well.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let bind_error = |protocol, source| Error::Bind {
        addr,
        protocol,
        source,
    };
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_error("udp", e))?;
        let bound = udp.local_addr().map_err(|e| bind_error("udp", e))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
            }
            Err(e) => return Err(bind_error("tcp", e)),
        }
    }
}

/// Whether a question sent to `upstream` would reach the server listening on `local`.
fn is_same_server(local: SocketAddr, upstream: SocketAddr) -> bool {
    if local.port() != upstream.port() {
        return false;
    }
    if local.ip() == upstream.ip() {
        return true;
    }
    // A wildcard listener receives what is sent to any address of this machine; binding to an
    // address succeeds exactly when it is one of them.
    local.ip().is_unspecified()
        && local.is_ipv4() == upstream.is_ipv4()
        && std::net::UdpSocket::bind((upstream.ip(), 0)).is_ok()
}

/// Who the server answers, by source address: a node's DNS server is its own pods' and the
/// node's, not an open resolver for whoever can reach the node's address (others get
/// `REFUSED`, as CoreDNS's `acl` plugin's `block`).
#[derive(Clone, Debug)]
pub struct Clients(Vec<ipnet::IpNet>);

impl Clients {
    pub fn new(networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        Self(networks.into_iter().collect())
    }

    fn allows(&self, ip: IpAddr) -> bool {
        // A v4 client on a dual-stack socket shows as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The request handler: cluster answers from the records, the rest forwarded.
struct ClusterDns {
    records: SharedRecords,
    upstreams: Vec<SocketAddr>,
    clients: Clients,
    answered: AnswerCounts,
}

#[async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let info = self.answer(request, response_handle).await;
        self.answered.count(rcode_name(info.response_code));
        info
    }
}

/// A response code as CoreDNS labels it (`coredns_dns_responses_total{rcode}`).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::BADVERS => "BADVERS".to_owned(),
        other => format!("{other:?}").to_uppercase(),
    }
}

impl ClusterDns {
    async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let fail = |code| {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = code;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let mut edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, EDNS_PAYLOAD))
                .set_version(0);
            edns
        });
        let code = if !self.clients.allows(request.src().ip()) {
            Some(ResponseCode::Refused)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.queries.queries().len() != 1 {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        if let Some(code) = code {
            if let Some(edns) = edns.as_mut() {
                edns.set_rcode_high(code.high());
            }
            let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                .error_msg(&request.metadata, code);
            return response_handle
                .send_response(response)
                .await
                .unwrap_or_else(|error| {
                    warn!(%error, "sending a DNS error response");
                    fail(code)
                });
        }
        let query = &request.queries.queries()[0];
        let name = Name::from(query.name().clone());
        let (answer, soa) = if query.query_class() == DNSClass::IN {
            let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
            let answer = records.resolve(&name, query.query_type());
            (answer, records.in_domain(&name).then(|| records.soa()))
        } else {
            (Answer::NotCluster, None)
        };
        debug!(%name, qtype = %query.query_type(), ?answer, "cluster DNS question");

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let result =
            match answer {
                Answer::Records {
                    answers,
                    additionals,
                } => {
                    metadata.authoritative = true;
                    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                        .build(metadata, answers.iter(), [], [], additionals.iter());
                    response_handle.send_response(response).await
                }
                Answer::NoData | Answer::NxDomain => {
                    metadata.authoritative = true;
                    if answer == Answer::NxDomain {
                        metadata.response_code = ResponseCode::NXDomain;
                    }
                    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                        .build(metadata, [], [], soa.iter(), []);
                    response_handle.send_response(response).await
                }
                Answer::NotCluster => match self.forward(request).await {
                    Some(upstream) => {
                        let mut metadata = upstream.metadata;
                        metadata.id = request.metadata.id;
                        // The upstream's EDNS record, sized to what our client can receive.
                        let upstream_edns = upstream.edns.clone().map(|mut e| {
                            let max = edns.as_ref().map_or(512, Edns::max_payload);
                            e.set_max_payload(max);
                            e
                        });
                        let edns = if edns.is_some() {
                            upstream_edns.or(edns)
                        } else {
                            None
                        };
                        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                            .build(
                                metadata,
                                upstream.answers.iter(),
                                upstream.authorities.iter(),
                                std::iter::empty::<&Record>(),
                                upstream.additionals.iter(),
                            );
                        response_handle.send_response(response).await
                    }
                    None => {
                        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                            .error_msg(&request.metadata, ResponseCode::ServFail);
                        response_handle.send_response(response).await
                    }
                },
            };
        result.unwrap_or_else(|error| {
            warn!(%error, "sending a DNS response");
            fail(ResponseCode::ServFail)
        })
    }
}

impl ClusterDns {
    /// Relays `request` to the upstreams in order until one answers; `None` if none did in
    /// time. An upstream's SERVFAIL or REFUSED is kept only if no other upstream does better.
    async fn forward(&self, request: &Request) -> Option<Message> {
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        let share = FORWARD_TIMEOUT / u32::try_from(self.upstreams.len().max(1)).unwrap_or(1);
        let mut fallback = None;
        for upstream in &self.upstreams {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let limit = share.max(MIN_UPSTREAM_TIMEOUT).min(left);
            let tcp = request.protocol().is_stream();
            match timeout(limit, exchange(request, *upstream, tcp)).await {
                Ok(Ok(response)) => match response.metadata.response_code {
                    ResponseCode::ServFail | ResponseCode::Refused => fallback = Some(response),
                    _ => return Some(response),
                },
                Ok(Err(error)) => debug!(%upstream, %error, "upstream DNS server failed"),
                Err(_) => debug!(%upstream, "upstream DNS server timed out"),
            }
        }
        if fallback.is_none() {
            warn!(name = %request.queries.queries()[0].name(), "no upstream DNS server answered");
        }
        fallback
    }
}

/// One exchange with an upstream: the client's message under a fresh random ID, the matching
/// response decoded.
async fn exchange(request: &Request, upstream: SocketAddr, tcp: bool) -> io::Result<Message> {
    let mut query = request.as_slice().to_vec();
    let id: u16 = rand::random();
    query[..2].copy_from_slice(&id.to_be_bytes());
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let question = &request.queries.queries()[0];
    let matches = |response: &Message| {
        response.metadata.id == id
            && response.metadata.message_type == MessageType::Response
            && response.queries.len() == 1
            && response.queries[0].name().to_lowercase() == question.name().to_lowercase()
            && response.queries[0].query_type() == question.query_type()
    };
    if tcp {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(|_| invalid("query too long"))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed).await?;
        loop {
            let len = stream.read_u16().await?;
            let mut buf = vec![0; usize::from(len)];
            stream.read_exact(&mut buf).await?;
            let response = Message::from_vec(&buf).map_err(|e| invalid(&e.to_string()))?;
            if matches(&response) {
                return Ok(response);
            }
        }
    }
    let bind: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    // Connected: the kernel drops datagrams from anyone else, and reports ICMP unreachable as
    // an error, so a dead upstream costs no timeout.
    socket.connect(upstream).await?;
    socket.send(&query).await?;
    let mut buf = vec![0; usize::from(u16::MAX)];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Anything that does not match (a late answer to someone else, garbage) is ignored.
        if let Ok(response) = Message::from_vec(&buf[..len])
            && matches(&response)
        {
            return Ok(response);
        }
    }
}

#[cfg(test)]
mod tests;
