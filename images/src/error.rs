//! What can go wrong in the image store, worded for the person who typed the command.

use std::path::PathBuf;

/// An image store error. Only [`Error::Registry`] and [`Error::Http`] are worth retrying as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference that does not follow the `[registry/]repository[:tag][@digest]` grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// No image of that reference in the local store.
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    /// The registry has no manifest for the tag or digest.
    #[error("manifest unknown: {reference} is not in registry {registry}")]
    ManifestUnknown { registry: String, reference: String },
    /// Content whose sha256 is not the one its descriptor announced.
    #[error("digest mismatch for {what} {expected}: the content hashes to {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// A malformed digest string.
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    /// A JSON document (manifest, index, config, archive metadata) that does not parse.
    #[error("{what}: {error}")]
    Json {
        what: String,
        error: serde_json::Error,
    },
    /// An archive or manifest that parses but is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// A media type or format this store cannot handle.
    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },
    /// A layer entry that would write outside the layer directory.
    #[error("layer {layer}: entry {entry:?} escapes the layer directory")]
    PathTraversal { layer: String, entry: String },
    /// The index or manifest list has no image for linux/amd64.
    #[error("{reference}: no image for linux/amd64 (found: {found})")]
    NoMatchingPlatform { reference: String, found: String },
    /// A registry answered with an unexpected status.
    #[error("registry {registry}: {what}: HTTP {status}: {body}")]
    Registry {
        registry: String,
        what: String,
        status: u16,
        body: String,
    },
    /// A manifest, index or token response larger than we read (4 MiB, as containerd): refused
    /// before it is buffered whole. Not retryable.
    #[error("registry {registry}: {what} is larger than the limit of {limit} bytes")]
    TooLarge {
        registry: String,
        what: String,
        limit: usize,
    },
    /// The registry asked for credentials we could not obtain anonymously.
    #[error("registry {registry}: authentication failed: {reason}")]
    Auth { registry: String, reason: String },
    /// A request that failed below HTTP (connection refused, TLS, timeout).
    #[error("registry {registry}: {}", chain(error))]
    Http {
        registry: String,
        error: reqwest::Error,
    },
    /// TLS configuration (bad extra CA PEM).
    #[error("TLS: {0}")]
    Tls(String),
    /// A file system operation failed.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

// Causes are spelled out in the messages (no `#[source]`), so that a message alone, as the agent
// logs it, says everything, and a chain printed by the CLI does not say it twice.

/// `error` and its causes on one line (reqwest's own message leaves out the interesting part).
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = next.source();
    }
    out
}

/// The image store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|error| Error::Io {
            path: path.into(),
            error,
        })
    }
}

/// Parses JSON, naming the document when it does not.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| Error::Json {
        what: what.to_owned(),
        error,
    })
}
