//! HTTPS for Apiary's servers (the API server on :6443, the node agent on :10250): rustls in
//! front of an axum router, HTTP/2 and HTTP/1.1 (with upgrades: exec, attach, port-forward) on
//! one port. What a client's certificate says is the caller's business ([`serve_tls`]'s
//! `identify`).
//!
//! No client holds the server's resources for long without using them: a connection has
//! [`Limits::handshake_timeout`] to finish its TLS handshake and [`Limits::header_read_timeout`]
//! to send a request's headers, an idle one is closed after [`Limits::idle_timeout`] (kube-
//! apiserver's Go `http.Server` settings, which the kubelet shares), and past
//! [`Limits::max_connections`] new connections wait in the listen backlog instead of failing
//! `accept` with EMFILE. A failed `accept` never ends the server.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, http::Request, response::Response};
use http_body::Frame;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// The address a request's connection comes from (for audit events' `sourceIPs`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The first and the longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// The pause after a failed `accept` that follows `previous` (none after a success): doubling
/// from 5 ms up to 1 s.
fn accept_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(ACCEPT_BACKOFF.0, |d| (d * 2).min(ACCEPT_BACKOFF.1))
}

/// What one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// To complete the TLS handshake (Go's default for `tls.Dial`).
    pub handshake_timeout: Duration,
    /// To send a request's headers once the server waits for them (kube-apiserver's
    /// `ReadHeaderTimeout`).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (kube-apiserver's
    /// `IdleTimeout`). Watches, logs and exec sessions are requests in flight.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            max_connections: 16_384,
        }
    }
}

impl Limits {
    /// The defaults, with at most as many connections as `open_files` descriptors allow (less
    /// a reserve for the store, logs and outgoing connections).
    pub fn for_open_files(open_files: u64) -> Self {
        let reserve = 256;
        let max = open_files.saturating_sub(reserve).max(64);
        Self {
            max_connections: usize::try_from(max)
                .unwrap_or(usize::MAX)
                .min(Self::default().max_connections),
            ..Self::default()
        }
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does at start (kube-
/// apiserver and the kubelet run with it): each connection is a descriptor. Returns the limit
/// in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves. Each connection runs on a task
/// of its own; a failed (or stalled) handshake or connection only ends that connection, and a
/// failed `accept` only pauses the loop.
///
/// Every request carries its connection's [`PeerAddr`] and whatever `identify` made of the
/// verified TLS session (the user of a client certificate) as request extensions.
pub async fn serve_tls<I>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    identify: impl Fn(&rustls::ServerConnection) -> Option<I> + Clone + Send + 'static,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    I: Clone + Send + Sync + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    let mut backoff: Option<Duration> = None;
    loop {
        // A slot first: at the limit, connections wait in the backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => return Ok(()),
        };
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
                let pause = accept_backoff(backoff);
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
        let identify = identify.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
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
            let client = identify(stream.get_ref().1);
            let activity = Activity::new();
            let app = {
                let (requests, responses) = (Arc::clone(&activity), Arc::clone(&activity));
                app.map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    if let Some(client) = &client {
                        request.extensions_mut().insert(client.clone());
                    }
                    requests.started();
                    request
                })
                .map_response(move |response: Response| {
                    let (parts, body) = response.into_parts();
                    let body = InFlight {
                        body,
                        activity: Some(Arc::clone(&responses)),
                    };
                    Response::from_parts(parts, Body::new(body))
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder.http2().timer(TokioTimer::new());
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(app),
            );
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    () = activity.idle_for(limits.idle_timeout), if !closing => {
                        tracing::debug!(%peer, "closing an idle connection");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

/// A connection's requests in flight and when it last had one.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
    }

    fn finished(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
            if self.in_flight.load(Ordering::SeqCst) == 0 && last.elapsed() >= timeout {
                return;
            }
            tokio::time::sleep_until(last + timeout).await;
            // A request in flight (a watch may last hours): look again a timeout later, so a
            // connection closes between one and two timeouts after its last request.
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

/// A response body whose request counts as in flight until it is sent (or dropped).
struct InFlight {
    body: Body,
    activity: Option<Arc<Activity>>,
}

impl InFlight {
    fn done(&mut self) {
        if let Some(activity) = self.activity.take() {
            activity.finished();
        }
    }
}

impl http_body::Body for InFlight {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            this.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::{TlsConnector, client::TlsStream};

    use super::*;

    /// A server with `limits` on loopback, its address and the certificate to trust.
    async fn server(limits: Limits) -> (SocketAddr, rustls::pki_types::CertificateDer<'static>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve_tls(
            listener,
            Arc::new(tls),
            app,
            limits,
            |_: &rustls::ServerConnection| None::<()>,
            std::future::pending(),
        ));
        (addr, der)
    }

    async fn connect(
        addr: SocketAddr,
        cert: &rustls::pki_types::CertificateDer<'static>,
    ) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
    }

    /// Reads until the server closes the connection; how long that took.
    async fn closed_after(stream: &mut TlsStream<tokio::net::TcpStream>) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    }

    fn short() -> Limits {
        Limits {
            handshake_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            max_connections: 64,
        }
    }

    #[tokio::test]
    async fn a_client_that_never_sends_its_headers_is_cut_off() {
        let (addr, cert) = server(Limits {
            idle_timeout: Duration::from_secs(30),
            ..short()
        })
        .await;
        let mut stream = connect(addr, &cert).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let waited = closed_after(&mut stream).await;
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (addr, cert) = server(Limits {
            header_read_timeout: Duration::from_secs(30),
            ..short()
        })
        .await;
        let mut stream = connect(addr, &cert).await.unwrap();
        // Requests keep it open past the idle timeout...
        for _ in 0..4 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // ...and once it is idle, it is closed.
        let waited = closed_after(&mut stream).await;
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[tokio::test]
    async fn a_stalled_handshake_is_cut_off() {
        let (addr, _) = server(short()).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let _ = tcp.read(&mut buf).await;
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn past_the_connection_limit_clients_wait_for_a_slot() {
        let (addr, cert) = server(Limits {
            max_connections: 2,
            handshake_timeout: Duration::from_secs(30),
            ..short()
        })
        .await;
        let first = connect(addr, &cert).await.unwrap();
        let _second = connect(addr, &cert).await.unwrap();
        // The third is not accepted: its handshake does not finish...
        let third = tokio::spawn(async move { connect(addr, &cert).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished());
        // ...until a slot is free.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the third connection is served once one closes");
        assert!(third.unwrap().is_ok());
    }

    #[test]
    fn accept_backs_off_from_5_ms_doubling_up_to_1_s() {
        let mut pauses = vec![accept_backoff(None)];
        for _ in 0..9 {
            pauses.push(accept_backoff(pauses.last().copied()));
        }
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_rest() {
        assert_eq!(Limits::for_open_files(1024).max_connections, 768);
        assert_eq!(Limits::for_open_files(100).max_connections, 64);
        assert_eq!(Limits::for_open_files(1 << 20).max_connections, 16_384);
    }
}
