//! HTTPS: rustls in front of the axum router, HTTP/2 and HTTP/1.1 (with upgrades) on one port.
//! A client certificate is optional; one the cluster CA did not sign fails the handshake (as Go's
//! `VerifyClientCertIfGiven`), and a verified one's user goes with every request of its
//! connection.

use std::{sync::Arc, time::Duration};

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

/// The address a request's connection comes from (for audit events' `sourceIPs`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// How long a client may take to complete its TLS handshake (Go's default for `tls.Dial`): a
/// connection that stalls it holds nothing longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Serves `app` over TLS on `listener` until `shutdown` resolves. Each connection runs on a task
/// of its own; a failed (or stalled) handshake or connection only ends that connection, and a
/// failed `accept` only pauses the loop.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = None;
                accepted
            }
            // EMFILE when idle connections hold every descriptor, ECONNABORTED, ENOBUFS: none
            // ends the server. The pause (Go's http.Server's: 5 ms doubling to 1 s) lets
            // connections close instead of spinning.
            Err(e) => {
                let pause = backoff.map_or(ACCEPT_BACKOFF.0, |b| (b * 2).min(ACCEPT_BACKOFF.1));
                backoff = Some(pause);
                tracing::warn!(error = %e, retry_in = ?pause, "accepting a connection failed");
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        // A response leaves as several TLS records; with Nagle the later ones wait for the
        // client's delayed ACK (40 ms per request).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
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
                request.extensions_mut().insert(PeerAddr(peer));
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
