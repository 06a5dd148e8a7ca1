//! One call of one webhook: an `AdmissionReview` POSTed over HTTPS to its URL or Service, its
//! answer read and checked, within the webhook's timeout.

use std::{sync::Arc, time::Duration};

use apiary_api::admissionregistration_v1::{ServiceReference, Webhook};
use axum::http::{self, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::apiserver::{Api, objects, streams::AgentEndpoint};

/// The most of a webhook's answer that is read (kube-apiserver's limit on a response body).
const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Why a call failed (kube-apiserver's `ErrCallingWebhook`): the failure policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError(pub String);

/// Sends `review` to `hook` and returns its `response`.
pub async fn call(api: &Api, hook: &Webhook, review: &Value) -> Result<Value, CallError> {
    let timeout = Duration::from_secs(hook.timeout_seconds.unwrap_or(10).clamp(1, 30) as u64);
    let target = Target::of(hook, timeout);
    let what = format!("Post \"{}\"", target.url);
    match tokio::time::timeout(timeout, post(api, hook, &target, review)).await {
        Ok(Ok(response)) => check(review, response),
        Ok(Err(e)) => Err(CallError(format!("failed to call webhook: {what}: {e}"))),
        Err(_) => Err(CallError(format!(
            "failed to call webhook: {what}: context deadline exceeded"
        ))),
    }
}

/// Where the review goes: the URL kube-apiserver would show, the TLS name to verify, and the
/// path to POST to.
struct Target {
    url: String,
    /// The URL's `host[:port]`, the request's `Host`.
    authority: String,
    server_name: String,
    path: String,
}

impl Target {
    fn of(hook: &Webhook, timeout: Duration) -> Self {
        let query = format!("timeout={}s", timeout.as_secs());
        match (&hook.client_config.url, &hook.client_config.service) {
            (Some(url), _) => {
                let rest = url.strip_prefix("https://").unwrap_or(url);
                let (authority, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                let host = match authority.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default(),
                    None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
                };
                Self {
                    url: format!("https://{authority}{path}?{query}"),
                    authority: authority.to_owned(),
                    server_name: host.to_owned(),
                    path: format!("{path}?{query}"),
                }
            }
            (None, Some(service)) => {
                let path = service.path.clone().unwrap_or_else(|| "/".to_owned());
                let host = format!("{}.{}.svc", service.name, service.namespace);
                let authority = format!("{host}:{}", service.port.unwrap_or(443));
                Self {
                    url: format!("https://{authority}{path}?{query}"),
                    authority,
                    server_name: host,
                    path: format!("{path}?{query}"),
                }
            }
            (None, None) => Self {
                url: String::new(),
                authority: String::new(),
                server_name: String::new(),
                path: "/".to_owned(),
            },
        }
    }
}

async fn post(api: &Api, hook: &Webhook, target: &Target, review: &Value) -> Result<Value, String> {
    let tls = tls_config(&hook.client_config.ca_bundle)?;
    let name = ServerName::try_from(target.server_name.clone()).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let request = http::Request::post(&target.path)
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(axum::body::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match (&hook.client_config.url, &hook.client_config.service) {
        (Some(url), _) => {
            let address = authority_of(url);
            let tcp = tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|e| format!("dial tcp {address}: {}", dial_error(&e)))?;
            // A review is a few small writes: without this, Nagle's algorithm holds the
            // body back for the server's delayed ACK (40 ms a call).
            let _ = tcp.set_nodelay(true);
            exchange(connector.connect(name, tcp).await, request).await
        }
        (None, Some(service)) => {
            let stream = dial_service(api, service).await?;
            exchange(connector.connect(name, stream).await, request).await
        }
        (None, None) => Err("the webhook has neither a URL nor a Service".to_owned()),
    }
}

/// A dial error in Go's words, which clients of kube-apiserver see.
fn dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
        _ => e.to_string(),
    }
}

/// `host:port` of an `https://` URL (443 when it names none).
fn authority_of(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    }
}

/// One HTTP/1.1 request over an established TLS stream, and its JSON answer.
async fn exchange<S>(
    tls: std::io::Result<tokio_rustls::client::TlsStream<S>>,
    request: http::Request<Full<axum::body::Bytes>>,
) -> Result<Value, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = tls.map_err(|e| format!("tls: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the server responded with status {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the response is not JSON: {e}"))
}

/// Roots that verify the webhook: its `caBundle`, or the system's when it has none.
fn tls_config(ca_bundle: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use base64::Engine as _;
    let mut roots = rustls::RootCertStore::empty();
    if ca_bundle.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    } else {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca_bundle)
            .map_err(|e| format!("caBundle: {e}"))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
            roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
        }
        if roots.is_empty() {
            return Err("caBundle: no certificate in it".to_owned());
        }
        let pinned = rustls_pemfile::certs(&mut pem.as_slice())
            .filter_map(Result::ok)
            .collect();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| format!("caBundle: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(BundleVerifier { webpki, pinned }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        return Ok(Arc::new(config));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A `caBundle`'s verifier. rustls refuses a server certificate that is a CA itself
/// (webpki's `CaUsedAsEndEntity`); Go, and so kube-apiserver, accepts a self-signed one the
/// bundle holds, which is what `openssl req -x509` makes and many webhook guides use. A
/// certificate the bundle pins byte for byte is trusted as itself: its name and validity
/// period are checked instead of a chain (the handshake's signature still proves its key).
#[derive(Debug)]
struct BundleVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        let expired = || {
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
                time: now,
                not_after: now,
            })
        };
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let at = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
            .map_err(|_| expired())?;
        if !cert.validity().is_valid_at(at) {
            return Err(expired());
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A connection to a ready endpoint of the Service, through the endpoint pod's node agent.
async fn dial_service(
    api: &Api,
    service: &ServiceReference,
) -> Result<tokio::io::DuplexStream, String> {
    let (ns, name) = (service.namespace.as_str(), service.name.as_str());
    let resource = |plural| {
        api.resources
            .get("", "v1", plural)
            .expect("core kinds are served")
    };
    let svc = objects::get(api, resource("services"), Some(ns), name)
        .await
        .map_err(|_| format!("service \"{name}\" not found"))?;
    let port = service.port.unwrap_or(443);
    let service_port = svc["spec"]["ports"]
        .as_array()
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p["port"].as_i64() == Some(port.into()))
        })
        .ok_or_else(|| format!("service \"{name}\" has no port {port}"))?;
    let port_name = service_port["name"].as_str().unwrap_or_default();
    let endpoints = objects::get(api, resource("endpoints"), Some(ns), name)
        .await
        .map_err(|_| format!("no endpoints available for service \"{name}\""))?;
    let mut candidates = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        let Some(target_port) = subset["ports"].as_array().and_then(|ports| {
            ports
                .iter()
                .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        for address in subset["addresses"].as_array().into_iter().flatten() {
            let target = &address["targetRef"];
            if target["kind"] == "Pod"
                && let Some(pod) = target["name"].as_str()
            {
                let pod_ns = target["namespace"].as_str().unwrap_or(ns).to_owned();
                candidates.push((pod_ns, pod.to_owned(), target_port));
            }
        }
    }
    if candidates.is_empty() {
        return Err(format!("no endpoints available for service \"{name}\""));
    }
    let (pod_ns, pod, target_port) =
        candidates.swap_remove(rand::random_range(0..candidates.len()));
    let pod_object = objects::get(api, resource("pods"), Some(&pod_ns), &pod)
        .await
        .map_err(|e| e.message)?;
    let node_name = pod_object["spec"]["nodeName"].as_str().unwrap_or_default();
    let node = objects::get(api, resource("nodes"), None, node_name)
        .await
        .map_err(|e| e.message)?;
    let agent = AgentEndpoint::of(&node)
        .ok_or_else(|| format!("node {node_name} has no InternalIP address"))?;
    super::tunnel::dial(api, &agent, &pod_ns, &pod, target_port).await
}

/// Checks an answer as kube-apiserver does: an `AdmissionReview` of the version sent, whose
/// `response.uid` is the request's.
fn check(review: &Value, answer: Value) -> Result<Value, CallError> {
    let sent_version = review["apiVersion"].as_str().unwrap_or_default();
    if answer["kind"] != "AdmissionReview" || answer["apiVersion"] != sent_version {
        return Err(CallError(format!(
            "expected webhook response of {sent_version}, Kind=AdmissionReview, got {}, Kind={}",
            answer["apiVersion"].as_str().unwrap_or_default(),
            answer["kind"].as_str().unwrap_or_default()
        )));
    }
    let response = &answer["response"];
    if !response.is_object() {
        return Err(CallError("webhook response was absent".to_owned()));
    }
    let uid = &review["request"]["uid"];
    if response["uid"] != *uid {
        return Err(CallError(format!(
            "expected response.uid={:?}, got {:?}",
            uid.as_str().unwrap_or_default(),
            response["uid"].as_str().unwrap_or_default()
        )));
    }
    Ok(response.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_are_named_as_kube_apiserver_names_them() {
        let hook: Webhook = serde_json::from_value(json!({
            "name": "a.b.c", "timeoutSeconds": 5,
            "clientConfig": {"service": {"namespace": "ns", "name": "hook", "path": "/mutate", "port": 8443}},
        }))
        .unwrap();
        let target = Target::of(&hook, Duration::from_secs(5));
        assert_eq!(target.url, "https://hook.ns.svc:8443/mutate?timeout=5s");
        assert_eq!(target.server_name, "hook.ns.svc");
        assert_eq!(target.path, "/mutate?timeout=5s");
        let hook: Webhook =
            serde_json::from_value(json!({"clientConfig": {"url": "https://127.0.0.1:9443"}}))
                .unwrap();
        let target = Target::of(&hook, Duration::from_secs(10));
        assert_eq!(target.url, "https://127.0.0.1:9443/?timeout=10s");
        assert_eq!(target.server_name, "127.0.0.1");
        assert_eq!(
            authority_of("https://hook.example.com/x"),
            "hook.example.com:443"
        );
        assert_eq!(authority_of("https://[::1]:8443/x"), "[::1]:8443");
    }

    #[test]
    fn answers_must_be_reviews_of_the_request() {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1"}});
        let ok = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "u1", "allowed": true}});
        assert_eq!(check(&review, ok).unwrap()["allowed"], true);
        let other_uid = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "u2", "allowed": true}});
        assert_eq!(
            check(&review, other_uid).unwrap_err().0,
            "expected response.uid=\"u1\", got \"u2\""
        );
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Status"});
        assert!(
            check(&review, wrong_kind)
                .unwrap_err()
                .0
                .contains("Kind=AdmissionReview")
        );
    }
}
