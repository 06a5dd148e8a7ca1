//! Running work inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling *thread*, so the work runs on a scoped thread
//! of its own: the caller's thread (and any async runtime on it) never leaves its namespace.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// Where `ip netns add NAME` puts its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors from entering a network namespace. None are retryable: the namespace is missing or the
/// process lacks `CAP_SYS_ADMIN`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The path of a network namespace given by name (as `ip netns` knows it) or by path.
pub fn path_of(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new(NETNS_RUN_DIR).join(name_or_path)
    }
}

/// Runs `work` on a thread that has entered the network namespace at `path`, and returns what it
/// returned.
pub fn run_in<T, F>(path: &Path, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let netns = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: `netns` is an open namespace file; setns only changes this thread.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::Enter {
                        path: path.to_owned(),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `work` in the namespace named by `netns`, or on the current thread when there is none.
pub fn run_in_optional<T, F>(netns: Option<&Path>, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    match netns {
        Some(path) => run_in(path, work),
        None => Ok(work()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_under_run_netns_and_paths_stay_paths() {
        assert_eq!(path_of("lab-1"), PathBuf::from("/run/netns/lab-1"));
        assert_eq!(path_of("/proc/42/ns/net"), PathBuf::from("/proc/42/ns/net"));
    }

    #[test]
    fn missing_namespace_is_an_open_error() {
        let err = run_in(Path::new("/run/netns/apiary-does-not-exist"), || ()).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
    }
}
