//! The runtime's error type.

use std::io;

/// What went wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container spec is invalid; `field` names the offending field. Not retryable.
    #[error("{field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    /// No container with this id on the node. Not retryable.
    #[error("container {id}: not found")]
    NotFound { id: String },
    /// A container with this id already exists (its state dir is present). Not retryable.
    #[error("container {id}: already exists")]
    AlreadyExists { id: String },
    /// The operation needs an exited container (remove). Retryable once it exited.
    #[error("container {id}: still running")]
    StillRunning { id: String },
    /// The operation needs a running container (signal, exec). Not retryable.
    #[error("container {id}: not running")]
    NotRunning { id: String },
    /// A file or system call failed; retryable when the cause is transient.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A state file could not be parsed. Not retryable.
    #[error("{path}: corrupt state: {source}")]
    CorruptState {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The shim failed outside the container's own start (it crashed, or could not run).
    #[error("container {id}: shim: {message}")]
    Shim { id: String, message: String },
    /// libcontainer refused an operation.
    #[error("{context}: {message}")]
    Container { context: String, message: String },
    /// Something did not happen in time; retryable.
    #[error("timed out {what}")]
    Timeout { what: String },
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] constructor for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// An [`Error::Io`] from a failed system call.
    pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let context = context.into();
        move |errno| Error::Io {
            context,
            source: io::Error::from(errno),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
