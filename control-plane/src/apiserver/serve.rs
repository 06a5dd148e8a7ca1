//! HTTPS: rustls in front of the axum router, HTTP/2 and HTTP/1.1 (with upgrades) on one port.
//! A client certificate is optional; one the cluster CA did not sign fails the handshake (as Go's
//! `VerifyClientCertIfGiven`), and a verified one's user goes with every request of its
//! connection.

use std::sync::Arc;

use axum::{Router, http::Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::authn::x509::{self, ClientCertUser};

/// Serves `app` over TLS on `listener` until `shutdown` resolves. Each connection runs on a task
/// of its own; a failed handshake or connection only ends that connection.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        // A response leaves as several TLS records; with Nagle the later ones wait for the
        // client's delayed ACK (40 ms per request).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let client = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| x509::user(der))
                .map(ClientCertUser);
            let app = app.map_request(move |mut request: Request<hyper::body::Incoming>| {
                if let Some(client) = &client {
                    request.extensions_mut().insert(client.clone());
                }
                request
            });
            let service = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
