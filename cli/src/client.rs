//! The HTTPS client for the API server: JSON in and out, Kubernetes `Status` bodies turned into
//! [`Error::Api`], and watches read as newline-delimited events.

use std::{sync::Arc, time::Duration};

use reqwest::{Method, StatusCode, header};
use rustls::{
    ClientConfig, RootCertStore,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde::Deserialize;
use serde_json::Value;

use crate::kubeconfig::Connection;

/// What `Accept` asks for to get a server-side `Table` (with plain JSON as the fallback).
pub const ACCEPT_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

const JSON: &str = "application/json";

/// Where the system's trusted roots are, when the kubeconfig names no certificate authority.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `Content-Type`s of `PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    fn content_type(self) -> &'static str {
        match self {
            Self::Merge => "application/merge-patch+json",
            Self::Json => "application/json-patch+json",
            Self::Strategic => "application/strategic-merge-patch+json",
        }
    }
}

/// A Kubernetes `Status`, as the server sends with every failed request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    /// `NotFound`, `Invalid`, `AlreadyExists` …; empty when the server gave none.
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: Option<StatusDetails>,
}

/// What the failure was about.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StatusDetails {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub causes: Vec<StatusCause>,
}

/// One invalid field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StatusCause {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused or failed the request; retryable only for 409 Conflict (after a fresh
    /// read), 429, 500 and 503.
    #[error("{}", .0.message)]
    Api(Box<Status>),
    /// No answer: the server is down or unreachable, or TLS failed. Retryable.
    #[error("cannot reach the server at {server}: {cause}")]
    Transport { server: String, cause: String },
    /// The answer was not the JSON expected; not retryable.
    #[error("the server's answer to {path} is not valid JSON")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The kubeconfig's certificates or keys are unusable; not retryable.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The server's `Status`, if the server answered.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Api(status) => Some(status),
            _ => None,
        }
    }

    /// Whether the server said 404.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.code == 404)
    }
}

/// `StatusReason` for a code, when the server's body did not name one.
fn reason_for(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// A WebSocket to the API server.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A client for one API server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
    basic_auth: Option<(String, String)>,
    /// For connections reqwest does not make (the WebSocket of `exec`).
    tls: Arc<ClientConfig>,
    tls_server_name: Option<String>,
}

impl Client {
    /// A client for `conn`'s server, trusting its certificate authority and presenting its
    /// credentials.
    pub fn new(conn: &Connection) -> Result<Self> {
        let tls = tls_config(conn)?;
        let mut upgrade_tls = tls.clone();
        // A WebSocket is an HTTP/1.1 upgrade.
        upgrade_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("apiary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Tls(chain(&e)))?;
        Ok(Self {
            http,
            server: conn.server.clone(),
            token: conn.token.clone(),
            basic_auth: conn.basic_auth.clone(),
            tls: Arc::new(upgrade_tls),
            tls_server_name: conn.tls_server_name.clone(),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        accept: &str,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server))
            .header(header::ACCEPT, accept);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        } else if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        request
    }

    async fn send(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status();
        let body = response.bytes().await.map_err(|e| self.transport(&e))?;
        Err(Error::Api(Box::new(status_from(code, &body, path))))
    }

    async fn json(&self, path: &str, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = self.send(path, request).await?;
        let body = response.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&body).map_err(|source| Error::Decode {
            path: path.to_owned(),
            source,
        })
    }

    fn transport(&self, e: &reqwest::Error) -> Error {
        Error::Transport {
            server: self.server.clone(),
            cause: chain(e),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        self.json(path, self.request(Method::GET, path, query, JSON))
            .await
    }

    /// `GET path` as a server-side `Table` (or whatever the server has, if it has no table).
    pub async fn get_table(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let request = self.request(Method::GET, path, query, ACCEPT_TABLE);
        self.json(path, request).await
    }

    /// `POST path` with `body`.
    pub async fn create(&self, path: &str, body: &Value) -> Result<Value> {
        let request = self.request(Method::POST, path, &[], JSON);
        self.json(path, with_json(request, body, JSON)).await
    }

    /// `PUT path` with `body`: a replacement carrying the resourceVersion it replaces.
    pub async fn replace(&self, path: &str, body: &Value) -> Result<Value> {
        let request = self.request(Method::PUT, path, &[], JSON);
        self.json(path, with_json(request, body, JSON)).await
    }

    /// `PATCH path` with `patch` of type `kind`.
    pub async fn patch(&self, path: &str, kind: PatchType, patch: &Value) -> Result<Value> {
        let request = self.request(Method::PATCH, path, &[], JSON);
        self.json(path, with_json(request, patch, kind.content_type()))
            .await
    }

    /// `DELETE path` with `options` (a `DeleteOptions`).
    pub async fn delete(&self, path: &str, options: &Value) -> Result<Value> {
        let request = self.request(Method::DELETE, path, &[], JSON);
        self.json(path, with_json(request, options, JSON)).await
    }

    /// `GET path` as a body read as it comes (`logs -f`).
    pub async fn stream(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Response> {
        let request = self.request(Method::GET, path, query, "text/plain, */*");
        self.send(path, request).await
    }

    /// Opens a WebSocket on `path` offering `protocols`; the server's refusal is
    /// [`Error::Api`] with its `Status`. Returns the socket and the protocol the server chose.
    pub async fn websocket(
        &self,
        path: &str,
        query: &[(&str, &str)],
        protocols: &[&str],
    ) -> Result<(WebSocket, String)> {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
        let transport = |cause: String| Error::Transport {
            server: self.server.clone(),
            cause,
        };
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.server), query)
            .map_err(|e| transport(format!("invalid URL: {e}")))?;
        let host = url
            .host_str()
            .ok_or_else(|| transport("the server URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let name = self.tls_server_name.clone().unwrap_or_else(|| host.clone());
        let name = ServerName::try_from(name).map_err(|e| Error::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let mut ws_url = url.clone();
        let _ = ws_url.set_scheme("wss");
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| transport(e.to_string()))?;
        let headers = request.headers_mut();
        let credentials = match (&self.token, &self.basic_auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some((user, password))) => {
                use base64::Engine as _;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            (None, None) => None,
        };
        if let Some(credentials) = credentials {
            headers.insert(
                header::AUTHORIZATION,
                credentials
                    .parse()
                    .map_err(|_| Error::Tls("the credentials are not a valid header".into()))?,
            );
        }
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            protocols
                .join(", ")
                .parse()
                .map_err(|_| transport("invalid subprotocol".into()))?,
        );
        match tokio_tungstenite::client_async(request, tls).await {
            Ok((socket, response)) => {
                let protocol = response
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                Ok((socket, protocol))
            }
            Err(tungstenite::Error::Http(response)) => {
                let code = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = response.body().clone().unwrap_or_default();
                Err(Error::Api(Box::new(status_from(code, &body, path))))
            }
            Err(e) => Err(transport(e.to_string())),
        }
    }

    /// `GET path?watch=true&…`: the events, as they come.
    pub async fn watch(&self, path: &str, query: &[(&str, &str)], as_table: bool) -> Result<Watch> {
        let mut query = query.to_vec();
        query.push(("watch", "true"));
        let accept = if as_table { ACCEPT_TABLE } else { JSON };
        let request = self.request(Method::GET, path, &query, accept);
        let response = self.send(path, request).await?;
        Ok(Watch {
            response,
            buffer: Vec::new(),
            path: path.to_owned(),
            server: self.server.clone(),
        })
    }
}

fn with_json(
    request: reqwest::RequestBuilder,
    body: &Value,
    content_type: &str,
) -> reqwest::RequestBuilder {
    request
        .header(header::CONTENT_TYPE, content_type)
        .body(serde_json::to_vec(body).expect("a JSON value always serializes"))
}

/// The `Status` in a failed response's body, or one made up from the code.
fn status_from(code: StatusCode, body: &[u8], path: &str) -> Status {
    if let Ok(mut status) = serde_json::from_slice::<Status>(body)
        && !status.message.is_empty()
    {
        if status.reason.is_empty() {
            status.reason = reason_for(code).to_owned();
        }
        status.code = code.as_u16();
        return status;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("the server responded with status {code} to {path}")
    } else {
        format!("the server responded with status {code} to {path}: {text}")
    };
    Status {
        code: code.as_u16(),
        reason: reason_for(code).to_owned(),
        message,
        details: None,
    }
}

/// An error and its causes on one line: reqwest's own message leaves out why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// A watch in progress.
#[derive(Debug)]
pub struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
    path: String,
    server: String,
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    #[serde(rename = "type")]
    pub kind: String,
    pub object: Value,
}

impl Watch {
    /// The next event, or `None` once the server ends the watch.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return self.decode(&line).map(Some);
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) if self.buffer.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                Ok(None) => {
                    let line = std::mem::take(&mut self.buffer);
                    return self.decode(&line).map(Some);
                }
                Err(e) => {
                    return Err(Error::Transport {
                        server: self.server.clone(),
                        cause: chain(&e),
                    });
                }
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<WatchEvent> {
        let event: WatchEvent = serde_json::from_slice(line).map_err(|source| Error::Decode {
            path: self.path.clone(),
            source,
        })?;
        if event.kind == "ERROR" {
            let status: Status = serde_json::from_value(event.object.clone()).unwrap_or_default();
            return Err(Error::Api(Box::new(status)));
        }
        Ok(event)
    }
}

/// The TLS settings of `conn`: its certificate authority (else the system's roots), its client
/// certificate, or no verification at all if it says `insecure-skip-tls-verify`.
fn tls_config(conn: &Connection) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if conn.insecure_skip_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match &conn.ca_pem {
            Some(pem) => {
                for cert in parse_certs(pem, "certificate-authority")? {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Tls(format!("certificate-authority: {e}")))?;
                }
            }
            None => {
                if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
                    let mut reader = pem.as_slice();
                    let certs: Vec<_> = rustls_pemfile::certs(&mut reader).flatten().collect();
                    roots.add_parsable_certificates(certs);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    match (&conn.client_cert_pem, &conn.client_key_pem) {
        (Some(cert), Some(key)) => {
            let certs = parse_certs(cert, "client-certificate")?;
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .map_err(|e| Error::Tls(format!("client-key: {e}")))?
                .ok_or_else(|| Error::Tls("client-key: no private key found".into()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no PEM certificate found")));
    }
    Ok(certs)
}

/// `insecure-skip-tls-verify: true`: any certificate is accepted, but handshake signatures are
/// still checked so that the connection is at least encrypted to whoever holds the key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_body_keeps_its_message_and_reason() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value","reason":"Invalid","details":{"name":"Bad_Name","kind":"configmaps","causes":[{"field":"metadata.name","message":"Invalid value"}]},"code":422}"#;
        let status = status_from(StatusCode::UNPROCESSABLE_ENTITY, body, "/x");
        assert_eq!(status.reason, "Invalid");
        assert_eq!(status.code, 422);
        assert!(
            status
                .message
                .starts_with("ConfigMap \"Bad_Name\" is invalid")
        );
        assert_eq!(status.details.unwrap().causes[0].field, "metadata.name");
    }

    #[test]
    fn a_body_that_is_not_a_status_still_gives_an_error() {
        let status = status_from(StatusCode::SERVICE_UNAVAILABLE, b"overloaded\n", "/api");
        assert_eq!(status.reason, "ServiceUnavailable");
        assert!(
            status.message.ends_with(": overloaded"),
            "{}",
            status.message
        );
        let status = status_from(StatusCode::NOT_FOUND, b"", "/apis/x");
        assert_eq!(status.reason, "NotFound");
    }
}
