//! The gRPC protocol between node agents and the control plane (`proto/apiary/agent/v1`), and a
//! client that connects the way agents do: TLS against the cluster CA, and a client
//! certificate (the node's identity) or a bearer token.

use tonic::{
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig},
};

/// Generated from `agent.proto`.
#[allow(missing_debug_implementations, clippy::all, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("apiary.agent.v1");
}

/// Adds `authorization: Bearer <token>` to every call (nothing for a client certificate).
#[derive(Clone, Debug)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A connected client.
pub type Client = v1::node_agent_client::NodeAgentClient<InterceptedService<Channel, BearerToken>>;

/// Errors connecting; all retryable once the control plane is reachable, except a malformed
/// token or URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid server URL {0}")]
    Url(String),
    #[error("the token is not valid in an HTTP header")]
    Token,
    #[error("connecting to {server}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// How an agent authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    Token(&'a str),
    /// A client certificate and its key, PEM.
    Certificate {
        cert_pem: &'a str,
        key_pem: &'a str,
    },
}

/// Connects to the control plane at `server` (`https://host:port`), trusting `ca_pem`, with a
/// bearer token.
pub async fn connect(server: &str, ca_pem: &str, token: &str) -> Result<Client, Error> {
    connect_as(server, ca_pem, Credential::Token(token)).await
}

/// Connects to the control plane at `server`, trusting `ca_pem`, as `credential`.
pub async fn connect_as(
    server: &str,
    ca_pem: &str,
    credential: Credential<'_>,
) -> Result<Client, Error> {
    connect_any(&[server.to_owned()], ca_pem, credential).await
}

/// Connects to the control plane's API servers `servers`, trusting `ca_pem`, as `credential`:
/// once one of them answers, calls are spread over all of them and go on through the others
/// while one is down (a server that cannot be reached is left out until it can be again).
pub async fn connect_any(
    servers: &[String],
    ca_pem: &str,
    credential: Credential<'_>,
) -> Result<Client, Error> {
    let (identity, token) = match credential {
        Credential::Token(token) => (
            None,
            Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| Error::Token)?,
            ),
        ),
        Credential::Certificate { cert_pem, key_pem } => (
            Some(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
            None,
        ),
    };
    let mut endpoints = Vec::with_capacity(servers.len());
    for server in servers {
        endpoints.push(endpoint(server, ca_pem, identity.clone())?);
    }
    // One must answer now (so that a wrong CA or URL is an error here, not a hang later).
    let mut last = Error::Url(String::new());
    let mut connected = None;
    for (endpoint, server) in endpoints.iter().zip(servers) {
        match endpoint.connect().await {
            Ok(channel) => {
                connected = Some(channel);
                break;
            }
            Err(source) => {
                last = Error::Connect {
                    server: server.clone(),
                    source,
                }
            }
        }
    }
    let Some(connected) = connected else {
        return Err(last);
    };
    let channel = if endpoints.len() == 1 {
        connected
    } else {
        // tonic's balancer keeps picking an endpoint whose server is gone (it reconnects on
        // each call), so the servers are probed here and only those that answer are in it.
        let (channel, changes) = Channel::balance_channel(servers.len());
        tokio::spawn(follow_servers(
            servers.iter().cloned().zip(endpoints).collect(),
            changes,
        ));
        channel
    };
    Ok(v1::node_agent_client::NodeAgentClient::with_interceptor(
        channel,
        BearerToken(token),
    ))
}

/// How often [`follow_servers`] probes, and how long a probe may take.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the balancer's endpoints to the servers that are ready: asks each for `/readyz` every
/// [`PROBE_EVERY`] (as a load balancer in front of kube-apiservers checks them), and takes one
/// out when it does not answer `200`, back in when it does again. A TCP connect alone is not
/// enough: a server cut off from etcd still accepts connections, and every call sent there
/// would wait for the store and fail. Ends with the channel.
async fn follow_servers(
    servers: Vec<(String, tonic::transport::Endpoint)>,
    changes: tokio::sync::mpsc::Sender<
        tonic::transport::channel::Change<String, tonic::transport::Endpoint>,
    >,
) {
    use tonic::transport::channel::Change;
    // One probing connection per server, kept between probes (reconnected when it breaks).
    let probes: Vec<Channel> = servers
        .iter()
        .map(|(_, endpoint)| endpoint.clone().timeout(PROBE_TIMEOUT).connect_lazy())
        .collect();
    let mut inside = vec![false; servers.len()];
    loop {
        for (((server, endpoint), probe), inside) in servers.iter().zip(&probes).zip(&mut inside) {
            let answers = ready(probe.clone()).await;
            let change = match (answers, *inside) {
                (true, false) => Change::Insert(server.clone(), endpoint.clone()),
                (false, true) => Change::Remove(server.clone()),
                _ => continue,
            };
            if answers {
                tracing::info!(%server, "API server ready: calls go there too");
            } else {
                tracing::warn!(%server, "API server not ready or unreachable: calls go to the others");
            }
            *inside = answers;
            if changes.send(change).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Whether the server behind `channel` answers `GET /readyz` with `200` within
/// [`PROBE_TIMEOUT`]. The API server serves HTTP and gRPC on one port, and `/readyz` to anyone
/// (`system:public-info-viewer`), so the channel's own connection can ask.
async fn ready(channel: Channel) -> bool {
    use tower::ServiceExt as _;
    let request = tonic::codegen::http::Request::get("/readyz")
        .body(tonic::body::Body::empty())
        .expect("a static request");
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, channel.oneshot(request)).await,
        Ok(Ok(response)) if response.status() == tonic::codegen::http::StatusCode::OK
    )
}

/// How to reach `server`: TLS trusting `ca_pem`, presenting `identity` if any.
fn endpoint(
    server: &str,
    ca_pem: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<tonic::transport::Endpoint, Error> {
    // The serving certificate always names `localhost`; other names come with the server URL.
    let host = server
        .trim_start_matches("https://")
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    let domain = if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost"
    } else {
        host
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(domain);
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(server.to_owned())
        .map_err(|_| Error::Url(server.to_owned()))?
        .tls_config(tls)
        .map_err(|source| Error::Connect {
            server: server.to_owned(),
            source,
        })
}
