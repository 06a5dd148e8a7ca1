//! gRPC over a unix socket: how a CSI plugin is served and reached (the kubelet dials
//! `unix://<path>`; there is no TCP and no TLS, the socket's directory is the access control).

use std::{io, path::Path, path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, server::Router};

/// A connection to a plugin, shared by the clients of its services.
pub type Channel = tonic::transport::Channel;

/// Why a plugin cannot be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the socket failed (not retryable without a change on the node).
    #[error("listening on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The server stopped.
    #[error("serving on {path}: {source}")]
    Serve {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The plugin did not answer (retryable: it may not be up yet).
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Binds `path` (replacing a stale socket left by a previous run; its directory is created
/// 0750) and serves `router` on it until `shutdown` completes.
pub async fn serve(
    router: Router,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let listen = |source| Error::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(listen)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(listen(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(listen)?;
    router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| Error::Serve {
            path: path.to_owned(),
            source,
        })
}

/// A channel to the plugin at `path`, connected now (so that a missing plugin is an error
/// here rather than at the first call); it reconnects on its own afterwards.
pub async fn connect(path: &Path) -> Result<Channel, Error> {
    let socket = path.to_owned();
    // The URI is a placeholder: the connector decides where the bytes go.
    Endpoint::from_static("http://[::1]:0")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })
}
