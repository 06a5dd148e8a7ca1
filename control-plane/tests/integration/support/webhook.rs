//! An admission webhook for tests: HTTPS on a loopback port with a self-signed certificate,
//! answering each `AdmissionReview` with what the test's function says, and keeping every
//! review it was sent.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{Value, json};

/// What the webhook answers to one review's `request`: the `response` without `uid`, and how
/// long to wait before answering.
pub type Answer = Box<dyn Fn(&Value) -> (Value, Duration) + Send + Sync>;

/// A running webhook; it stops with the test process.
pub struct Webhook {
    pub address: SocketAddr,
    /// The PEM certificate clients must trust, base64 (a `caBundle`).
    pub ca_bundle: String,
    reviews: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start(answer: Answer) -> Self {
        let (cert, key) =
            super::certs::self_signed_cert(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        Self::start_with_certificate(answer, &cert, &key)
    }

    /// A webhook serving `cert` (PEM, with `key`), which is also its `caBundle`.
    pub fn start_with_certificate(answer: Answer, cert: &str, key: &str) -> Self {
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cert);
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let tls = {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        };
        let answer = Arc::new(answer);
        let kept = Arc::clone(&reviews);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (tls, answer, kept) = (tls.clone(), Arc::clone(&answer), Arc::clone(&kept));
                    tokio::spawn(async move {
                        let Ok(stream) = tls.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |request| {
                            let (answer, kept) = (Arc::clone(&answer), Arc::clone(&kept));
                            async move { respond(request, &answer, &kept).await }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Self {
            address,
            ca_bundle,
            reviews,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    /// The reviews sent so far.
    pub fn reviews(&self) -> Vec<Value> {
        self.reviews.lock().unwrap().clone()
    }
}

async fn respond(
    request: hyper::Request<hyper::body::Incoming>,
    answer: &Answer,
    kept: &Mutex<Vec<Value>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt as _;
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    kept.lock().unwrap().push(review.clone());
    let (mut response, delay) = answer(&review["request"]);
    tokio::time::sleep(delay).await;
    response["uid"] = review["request"]["uid"].clone();
    let reply = json!({
        "apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response,
    });
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            reply.to_string(),
        )))
        .unwrap())
}

/// A JSON patch as a review's `patch` (base64).
pub fn patch(ops: Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(ops.to_string())
}
