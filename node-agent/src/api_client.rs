//! The agent's HTTP client for the API server: what the gRPC channel does not carry (ConfigMaps
//! and Secrets that pods reference, Events, mirror pods of static pods, finishing a graceful pod
//! deletion).

use std::{
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use apiary_api::{
    core_v1::{Event, ObjectReference},
    events::{self, Decision, EventCorrelator},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::kubeconfig::Endpoint;

/// A client authenticated with the node's client certificate (or a token), trusting only the
/// cluster CA.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The API servers, in the order tried; requests go to `current` until it cannot be
    /// reached, then to the next that can, trying the servers that are ready first.
    servers: Arc<[String]>,
    current: Arc<AtomicUsize>,
    /// Whether each server answered its last `/readyz`: with several servers, a prober started
    /// by the first request asks each every [`READY_PROBE_EVERY`].
    ready: Arc<[AtomicBool]>,
    prober: Arc<OnceLock<()>>,
    token: String,
    /// The queue of Events to record, with their time; the writer task is started with the
    /// first. Shared by the clones of this client: one Event correlator per agent.
    events: Arc<OnceLock<mpsc::Sender<(Event, SystemTime)>>>,
}

/// How often the API servers' readiness is asked, and how long an answer may take.
const READY_PROBE_EVERY: Duration = Duration::from_secs(1);
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The order in which servers are tried: from `first` round the list, the ready ones, then the
/// others (a server thought not ready may be the only one left that answers).
fn try_order(first: usize, ready: &[AtomicBool]) -> Vec<usize> {
    let round = (0..ready.len()).map(|i| (first + i) % ready.len());
    let (mut order, not_ready): (Vec<usize>, Vec<usize>) =
        round.partition(|&at| ready[at].load(Ordering::Relaxed));
    order.extend(not_ready);
    order
}

/// Asks every server for `/readyz` (open to anyone, as kube-apiserver's) until `ready` is gone.
async fn probe_readiness(http: reqwest::Client, servers: Arc<[String]>, ready: Weak<[AtomicBool]>) {
    loop {
        for (at, server) in servers.iter().enumerate() {
            let answer = http
                .get(format!("{server}/readyz"))
                .timeout(READY_PROBE_TIMEOUT)
                .send()
                .await;
            let is_ready = matches!(&answer, Ok(r) if r.status() == reqwest::StatusCode::OK);
            let Some(ready) = ready.upgrade() else {
                return;
            };
            if ready[at].swap(is_ready, Ordering::Relaxed) != is_ready {
                tracing::info!(%server, ready = is_ready, "API server readiness changed");
            }
        }
        tokio::time::sleep(READY_PROBE_EVERY).await;
    }
}

/// What a GET of a namespaced object found.
#[derive(Debug)]
pub enum Found<T> {
    Object(T),
    Missing,
}

impl ApiClient {
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut endpoint.ca_pem.as_bytes()) {
            roots
                .add(cert.context("the cluster CA is not PEM")?)
                .context("adding the cluster CA")?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
        let tls = match &endpoint.client_certificate {
            Some(files) => tls.with_client_cert_resolver(Arc::new(
                crate::certificates::FileClientCert::new(files.clone()),
            )),
            None => tls.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            servers: endpoint
                .servers()
                .iter()
                .map(|s| s.trim_end_matches('/').to_owned())
                .collect(),
            current: Arc::default(),
            ready: endpoint
                .servers()
                .iter()
                .map(|_| AtomicBool::new(true))
                .collect(),
            prober: Arc::default(),
            token: endpoint.token.clone(),
            events: Arc::default(),
        })
    }

    /// Sends the request `build` makes of `method path` to the current server, and when it
    /// cannot be reached, to the others in turn (the one that answers becomes current). Servers
    /// that are ready come first: one cut off from its store still accepts connections, and a
    /// request sent there would only wait and fail. Only a connection that failed is retried
    /// elsewhere: a request that reached a server may have been applied there.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        self.start_prober();
        let first = self.current.load(Ordering::Relaxed);
        let mut unreachable = None;
        for at in try_order(first, &self.ready) {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.servers[at]));
            if !self.token.is_empty() {
                request = request.bearer_auth(&self.token);
            }
            match build(request).send().await {
                Ok(response) => {
                    if at != first {
                        tracing::info!(server = %self.servers[at], "the API server answers here now");
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(response);
                }
                Err(e) if e.is_connect() => unreachable = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(unreachable.expect("an endpoint has at least one server"))
    }

    /// With several servers, starts (once) the task that keeps [`ApiClient::ready`] current;
    /// it ends when the last clone of this client is dropped.
    fn start_prober(&self) {
        if self.servers.len() < 2 {
            return;
        }
        self.prober.get_or_init(|| {
            let http = self.http.clone();
            let servers = Arc::clone(&self.servers);
            let ready = Arc::downgrade(&self.ready);
            tokio::spawn(probe_readiness(http, servers, ready));
        });
    }

    /// GETs `path`; a 404 is [`Found::Missing`], not an error.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Found<T>> {
        let response = self
            .send(reqwest::Method::GET, path, |r| r)
            .await
            .with_context(|| format!("GET {path}"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Found::Missing);
        }
        let response = check(response, "GET", path).await?;
        Ok(Found::Object(
            response
                .json()
                .await
                .with_context(|| format!("decoding GET {path}"))?,
        ))
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .send(reqwest::Method::POST, path, |r| r.json(body))
            .await
            .with_context(|| format!("POST {path}"))?;
        let response = check(response, "POST", path).await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// PUTs `body` to `path` (a replacement carrying the resourceVersion it replaces).
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .send(reqwest::Method::PUT, path, |r| r.json(body))
            .await
            .with_context(|| format!("PUT {path}"))?;
        let response = check(response, "PUT", path).await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// DELETEs `path` with `options` (a DeleteOptions body); a 404 counts as done.
    pub async fn delete(&self, path: &str, options: &Value) -> anyhow::Result<()> {
        let response = self
            .send(reqwest::Method::DELETE, path, |r| r.json(options))
            .await
            .with_context(|| format!("DELETE {path}"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(response, "DELETE", path).await.map(drop)
    }

    /// Merge-PATCHes `path` with `patch`; a 404 is [`Found::Missing`], not an error.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> anyhow::Result<Found<Value>> {
        let body = serde_json::to_vec(patch).context("encoding a patch")?;
        let response = self
            .send(reqwest::Method::PATCH, path, |r| {
                r.header(
                    reqwest::header::CONTENT_TYPE,
                    "application/merge-patch+json",
                )
                .body(body.clone())
            })
            .await
            .with_context(|| format!("PATCH {path}"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Found::Missing);
        }
        let response = check(response, "PATCH", path).await?;
        Ok(Found::Object(response.json().await.unwrap_or(Value::Null)))
    }

    /// Records an Event about a pod, as the kubelet does: a repeat within the agent's memory
    /// bumps the count of the Event it repeats ([`apiary_api::events`]). Queued and written in
    /// order by one task; failures are only logged, and a full queue drops the Event (as
    /// client-go's broadcaster does): an Event is never worth holding up a pod.
    pub fn pod_event(&self, node: &str, pod: &PodRef, type_: &str, reason: &str, message: String) {
        let involved = ObjectReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            uid: pod.uid.clone(),
            field_path: pod.field_path.clone(),
            ..ObjectReference::default()
        };
        self.object_event("kubelet", node, involved, type_, reason, message);
    }

    /// Records an Event about any object as `component` on `node` (a CSI sidecar's Events
    /// about claims, say), through the same correlator and queue as [`Self::pod_event`].
    pub fn object_event(
        &self,
        component: &str,
        node: &str,
        involved: ObjectReference,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let now = SystemTime::now();
        let reporter = events::Reporter {
            component,
            host: node,
            instance: node,
        };
        let event = events::new_event(reporter, involved, (type_, reason), message, now);
        let queue = self.events.get_or_init(|| {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            // The writer's client has no queue of its own, so that it does not keep this one
            // open: the task ends when the last client recording Events is dropped.
            let writer = Self {
                events: Arc::default(),
                ..self.clone()
            };
            tokio::spawn(writer.write_events(rx));
            tx
        });
        if queue.try_send((event, now)).is_err() {
            tracing::debug!(reason, "the event queue is full; dropping an event");
        }
    }

    /// Correlates and writes queued Events one at a time, so that a repeat never overtakes the
    /// creation of the Event it bumps.
    async fn write_events(self, mut queue: mpsc::Receiver<(Event, SystemTime)>) {
        let mut correlator = EventCorrelator::default();
        while let Some((event, at)) = queue.recv().await {
            let decision = correlator.correlate(event, at);
            if let Err(e) = self.write_event(&decision).await {
                tracing::debug!(error = %format!("{e:#}"), "recording an event");
            }
        }
    }

    /// A merge patch of the stored Event for a repeat, a create for a new one or for a repeat
    /// whose Event is gone (client-go's `recordEvent`).
    async fn write_event(&self, decision: &Decision) -> anyhow::Result<()> {
        let event = decision.event();
        let events = format!("/api/v1/namespaces/{}/events", event.metadata.namespace);
        if let Some(patch) = decision.patch() {
            let path = format!("{events}/{}", event.metadata.name);
            if let Found::Object(_) = self.merge_patch(&path, &patch).await? {
                return Ok(());
            }
        }
        let body = serde_json::to_value(event).context("encoding an event")?;
        self.post(&events, &body).await.map(drop)
    }
}

/// How many Events wait to be written before more are dropped (client-go's
/// `maxQueuedEvents`).
const EVENT_QUEUE: usize = 1000;

/// Which pod (and which of its containers) an Event is about.
#[derive(Clone, Debug, Default)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}`, or empty for the pod itself.
    pub field_path: String,
}

async fn check(
    response: reqwest::Response,
    method: &str,
    path: &str,
) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or("no message");
    anyhow::bail!("{method} {path}: {status}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(flags: &[bool]) -> Vec<AtomicBool> {
        flags.iter().map(|&f| AtomicBool::new(f)).collect()
    }

    #[test]
    fn ready_servers_are_tried_first_from_the_current_one_round_the_list() {
        assert_eq!(try_order(1, &ready(&[true, true, true])), [1, 2, 0]);
        assert_eq!(try_order(1, &ready(&[true, false, true])), [2, 0, 1]);
        assert_eq!(try_order(0, &ready(&[false, false, true])), [2, 0, 1]);
    }

    #[test]
    fn servers_not_ready_are_still_tried_last() {
        assert_eq!(try_order(2, &ready(&[false, false, false])), [2, 0, 1]);
        assert_eq!(try_order(0, &ready(&[false])), [0]);
    }
}
