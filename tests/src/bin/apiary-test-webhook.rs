//! A mutating admission webhook to run in a pod: HTTPS on `--port` with the certificate and key
//! at `--cert` and `--key`, answering every `AdmissionReview` with a JSON patch that labels the
//! object `mutated-by: <--label-value>` (and the pod's hostname in `mutated-on`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use base64::Engine as _;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8443)]
    port: u16,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "apiary-test-webhook")]
    label_value: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cert = std::fs::read(&args.cert)?;
    let key = std::fs::read(&args.key)?;
    let certs = rustls_pemfile::certs(&mut cert.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key.as_slice())?
        .ok_or_else(|| anyhow::anyhow!("no private key in {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], args.port))).await?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let labels = Arc::new((args.label_value, hostname));
    eprintln!("serving admission reviews on :{}", args.port);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (acceptor, labels) = (acceptor.clone(), Arc::clone(&labels));
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => return eprintln!("TLS handshake with {peer}: {e}"),
            };
            let service = hyper::service::service_fn(move |request| {
                let labels = Arc::clone(&labels);
                async move { review(request, &labels).await }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

async fn review(
    request: hyper::Request<hyper::body::Incoming>,
    (value, hostname): &(String, String),
) -> Result<hyper::Response<Full<bytes::Bytes>>, std::convert::Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request = &review["request"];
    let mut ops = Vec::new();
    if request["object"]["metadata"]["labels"].is_null() {
        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {}}));
    }
    ops.push(json!({"op": "add", "path": "/metadata/labels/mutated-by", "value": value}));
    ops.push(json!({"op": "add", "path": "/metadata/labels/mutated-on", "value": hostname}));
    let patch = base64::engine::general_purpose::STANDARD.encode(json!(ops).to_string());
    let answer = json!({
        "apiVersion": review["apiVersion"],
        "kind": "AdmissionReview",
        "response": {"uid": request["uid"], "allowed": true, "patchType": "JSONPatch", "patch": patch},
    });
    eprintln!(
        "{} {}/{}",
        request["operation"].as_str().unwrap_or_default(),
        request["namespace"].as_str().unwrap_or_default(),
        request["name"].as_str().unwrap_or_default()
    );
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(answer.to_string())))
        .expect("a static response builds"))
}
