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
    let connect_err = |source| Error::Connect {
        server: server.to_owned(),
        source,
    };
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
    let token = match credential {
        Credential::Token(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| Error::Token)?,
        ),
        Credential::Certificate { cert_pem, key_pem } => {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
            None
        }
    };
    let channel = Channel::from_shared(server.to_owned())
        .map_err(|_| Error::Url(server.to_owned()))?
        .tls_config(tls)
        .map_err(connect_err)?
        .connect()
        .await
        .map_err(connect_err)?;
    Ok(v1::node_agent_client::NodeAgentClient::with_interceptor(
        channel,
        BearerToken(token),
    ))
}
