//! A TLS server that plays a node agent (the kubelet's port) for the API server to call.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a fake agent saw: the client certificate's subject and the request's head.
#[derive(Default, Debug)]
pub struct Seen {
    pub client: Option<String>,
    pub request: Option<String>,
}

/// A TLS server on loopback that plays a node agent with `serving` (certificate and key PEM),
/// accepting client certificates of `client_ca`: it records what it sees and answers `200` with
/// what `respond` makes of the request's head.
pub fn start(
    serving: (&str, &str),
    client_ca: &str,
    respond: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Seen>>, tokio::runtime::Runtime) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = rustls_pemfile::certs(&mut serving.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut serving.1.as_bytes())
        .unwrap()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut client_ca.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let respond = Arc::new(respond);
    runtime.spawn({
        let seen = Arc::clone(&seen);
        async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let client = tls.get_ref().1.peer_certificates().and_then(|chain| {
                    use x509_parser::prelude::{FromDer as _, X509Certificate};
                    let (_, cert) = X509Certificate::from_der(&chain[0]).ok()?;
                    Some(cert.subject().to_string())
                });
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let body = respond(&head);
                {
                    let mut seen = seen.lock().unwrap();
                    seen.client = client;
                    if !head.is_empty() {
                        seen.request = Some(head);
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        }
    });
    (addr, seen, runtime)
}
