//! kube-apiserver's max-in-flight filter (`--max-requests-inflight`,
//! `--max-mutating-requests-inflight`): at most so many read-only and so many mutating requests
//! are served at once; one more is refused at once with `429` and `Retry-After: 1`, which
//! client-go and kubectl retry. Long-running requests (watches, exec, logs, proxies) are not
//! counted, and neither is `system:masters`, as in Kubernetes: an overloaded server stays
//! reachable by its administrators.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use tokio::sync::Semaphore;

use super::{
    Api,
    auth::UserInfo,
    authz::{rbac::PRIVILEGED_GROUP, request_info},
};

/// kube-apiserver's defaults.
pub const DEFAULT_READ_ONLY: usize = 400;
pub const DEFAULT_MUTATING: usize = 200;

/// The two pools of request slots; `None` is no limit (a flag of 0).
#[derive(Debug)]
pub struct Limits {
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(DEFAULT_READ_ONLY, DEFAULT_MUTATING)
    }
}

impl Limits {
    pub fn new(read_only: usize, mutating: usize) -> Self {
        let pool = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Self {
            read_only: pool(read_only),
            mutating: pool(mutating),
        }
    }

    /// The pool `verb` draws from.
    fn pool(&self, verb: &str) -> Option<&Arc<Semaphore>> {
        if is_read_only(verb) {
            self.read_only.as_ref()
        } else {
            self.mutating.as_ref()
        }
    }
}

/// Whether `verb` is one of Kubernetes' non-mutating verbs; a non-resource request's verb is
/// its method.
pub fn is_read_only(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch" | "head" | "options")
}

/// The filter, after authentication (it needs the user) and before authorization.
pub async fn limit(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let info = request_info::of(&mut request);
    let privileged = request
        .extensions()
        .get::<UserInfo>()
        .is_some_and(|u| u.groups.iter().any(|g| g == PRIVILEGED_GROUP));
    if privileged || info.is_long_running() {
        return next.run(request).await;
    }
    let Some(pool) = api.inflight.pool(&info.verb) else {
        return next.run(request).await;
    };
    match Arc::clone(pool).try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => too_many_requests(),
    }
}

/// Kubernetes' answer: plain text, as Go's `http.Error`, with the delay clients wait for.
fn too_many_requests() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, "1"),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "Too many requests, please try again later.\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_draw_from_their_own_pools() {
        let limits = Limits::new(2, 1);
        let read = limits.pool("list").unwrap();
        let write = limits.pool("create").unwrap();
        assert!(!Arc::ptr_eq(read, write));
        assert!(Arc::ptr_eq(limits.pool("get").unwrap(), read));
        assert!(Arc::ptr_eq(limits.pool("post").unwrap(), write));
        let _a = Arc::clone(read).try_acquire_owned().unwrap();
        let _b = Arc::clone(read).try_acquire_owned().unwrap();
        assert!(
            Arc::clone(read).try_acquire_owned().is_err(),
            "the third read waits"
        );
        let _w = Arc::clone(write).try_acquire_owned().unwrap();
        assert!(Arc::clone(write).try_acquire_owned().is_err());
    }

    #[test]
    fn zero_is_no_limit() {
        let limits = Limits::new(0, 0);
        assert!(limits.pool("list").is_none() && limits.pool("create").is_none());
    }
}
