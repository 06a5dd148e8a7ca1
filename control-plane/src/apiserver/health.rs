//! `/livez`, `/readyz` and `/healthz` as kube-apiserver answers them: named checks (`ping`,
//! `log`, `etcd`, and for readiness `etcd-readiness`), `ok` when all pass, otherwise a 500 that
//! lists every check (`[-]etcd failed: reason withheld`, the reason is logged) and ends with
//! `<endpoint> check failed`. `?verbose` lists them on success too, `?exclude=NAME` skips one,
//! and `/readyz/NAME` runs one alone.
//!
//! The store's check is the one that can fail: etcd unreachable, or the embedded file's last
//! write failed (a full disk), so a load balancer in front of several API servers can send
//! clients elsewhere.

use std::sync::Arc;

use axum::{
    extract::{Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};

use super::Api;

/// Which endpoint: their checks differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Livez,
    Readyz,
    Healthz,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Self::Livez => "livez",
            Self::Readyz => "readyz",
            Self::Healthz => "healthz",
        }
    }

    /// kube-apiserver's checks of the endpoint that Apiary has.
    fn checks(self) -> &'static [&'static str] {
        match self {
            Self::Livez | Self::Healthz => &["ping", "log", "etcd"],
            Self::Readyz => &["ping", "log", "etcd", "etcd-readiness"],
        }
    }
}

/// Runs one check: `Err` says why it failed. `store` is the store's answer when one call
/// already asked (`etcd` and `etcd-readiness` ask the same question: one wait, not two, while
/// etcd does not answer).
async fn run(api: &Api, check: &str, store: &mut Option<Result<(), String>>) -> Result<(), String> {
    match check {
        "etcd" | "etcd-readiness" => {
            if store.is_none() {
                *store = Some(api.store.check().await.map_err(|e| e.to_string()));
            }
            store.clone().unwrap_or(Ok(()))
        }
        _ => Ok(()),
    }
}

/// What `?verbose&exclude=a&exclude=b` asks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    verbose: bool,
    exclude: Vec<String>,
}

fn options(query: Option<&str>) -> Options {
    let mut options = Options::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "verbose" => options.verbose = true,
            "exclude" => options.exclude.push(value.into_owned()),
            _ => {}
        }
    }
    options
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The endpoint itself: every check.
pub async fn all(endpoint: Endpoint, api: Arc<Api>, query: Option<String>) -> Response {
    let options = options(query.as_deref());
    let mut lines = String::new();
    let mut failed = false;
    let mut store = None;
    for check in endpoint.checks() {
        if options.exclude.iter().any(|e| e == check) {
            lines.push_str(&format!("[+]{check} excluded: ok\n"));
            continue;
        }
        match run(&api, check, &mut store).await {
            Ok(()) => lines.push_str(&format!("[+]{check} ok\n")),
            Err(reason) => {
                tracing::warn!(endpoint = endpoint.name(), check, %reason, "health check failed");
                lines.push_str(&format!("[-]{check} failed: reason withheld\n"));
                failed = true;
            }
        }
    }
    for excluded in &options.exclude {
        if !endpoint.checks().contains(&excluded.as_str()) {
            lines.push_str(&format!(
                "warn: some health checks cannot be excluded: no matches for \"{excluded}\"\n"
            ));
        }
    }
    let name = endpoint.name();
    if failed {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{lines}{name} check failed\n"),
        );
    }
    if options.verbose {
        return text(StatusCode::OK, format!("{lines}{name} check passed\n"));
    }
    text(StatusCode::OK, "ok".to_owned())
}

/// `/livez/NAME`, `/readyz/NAME`, `/healthz/NAME`: one check.
pub async fn one(endpoint: Endpoint, api: Arc<Api>, check: &str) -> Response {
    if !endpoint.checks().contains(&check) {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".to_owned());
    }
    match run(&api, check, &mut None).await {
        Ok(()) => text(StatusCode::OK, "ok".to_owned()),
        Err(reason) => {
            tracing::warn!(endpoint = endpoint.name(), check, %reason, "health check failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error: reason withheld\n".to_owned(),
            )
        }
    }
}

pub async fn livez(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    all(Endpoint::Livez, api, query).await
}

pub async fn readyz(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    all(Endpoint::Readyz, api, query).await
}

pub async fn healthz(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    all(Endpoint::Healthz, api, query).await
}

pub async fn livez_one(State(api): State<Arc<Api>>, Path(check): Path<String>) -> Response {
    one(Endpoint::Livez, api, &check).await
}

pub async fn readyz_one(State(api): State<Arc<Api>>, Path(check): Path<String>) -> Response {
    one(Endpoint::Readyz, api, &check).await
}

pub async fn healthz_one(State(api): State<Arc<Api>>, Path(check): Path<String>) -> Response {
    one(Endpoint::Healthz, api, &check).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_and_exclusions_are_read_from_the_query() {
        assert_eq!(options(None), Options::default());
        assert_eq!(
            options(Some("verbose&exclude=etcd&exclude=log")),
            Options {
                verbose: true,
                exclude: vec!["etcd".into(), "log".into()]
            }
        );
    }
}
