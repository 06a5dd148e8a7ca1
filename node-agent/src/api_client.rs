//! The agent's HTTP client for the API server: what the gRPC channel does not carry (ConfigMaps
//! and Secrets that pods reference, Events, mirror pods of static pods, finishing a graceful pod
//! deletion).

use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::kubeconfig::Endpoint;

/// A client authenticated with the node's token, trusting only the cluster CA.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    server: String,
    token: String,
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
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            server: endpoint.server.trim_end_matches('/').to_owned(),
            token: endpoint.token.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token)
    }

    /// GETs `path`; a 404 is [`Found::Missing`], not an error.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Found<T>> {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
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
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let response = check(response, "POST", path).await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// PUTs `body` to `path` (a replacement carrying the resourceVersion it replaces).
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .request(reqwest::Method::PUT, path)
            .json(body)
            .send()
            .await
            .with_context(|| format!("PUT {path}"))?;
        let response = check(response, "PUT", path).await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// DELETEs `path` with `options` (a DeleteOptions body); a 404 counts as done.
    pub async fn delete(&self, path: &str, options: &Value) -> anyhow::Result<()> {
        let response = self
            .request(reqwest::Method::DELETE, path)
            .json(options)
            .send()
            .await
            .with_context(|| format!("DELETE {path}"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(response, "DELETE", path).await.map(drop)
    }

    /// Records an Event about a pod, as the kubelet does; failures are only logged; an Event is
    /// never worth holding up a pod.
    pub fn pod_event(&self, node: &str, pod: &PodRef, type_: &str, reason: &str, message: String) {
        let client = self.clone();
        let now = chrono::Utc::now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{:x}", pod.name, now.timestamp_nanos_opt().unwrap_or_default()),
                "namespace": pod.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace,
                "uid": pod.uid, "fieldPath": pod.field_path,
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": { "component": "kubelet", "host": node },
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "lastTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "count": 1,
        });
        let path = format!("/api/v1/namespaces/{}/events", pod.namespace);
        tokio::spawn(async move {
            if let Err(e) = client.post(&path, &event).await {
                tracing::debug!(error = %format!("{e:#}"), "recording an event");
            }
        });
    }
}

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
