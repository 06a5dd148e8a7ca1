//! Auditing, as kube-apiserver's (`--audit-policy-file`, `--audit-log-path`): every request
//! gets an audit ID (the `Audit-Id` response header), and the policy ([`policy`]) decides which
//! stages of it become `audit.k8s.io/v1` `Event`s in the log ([`log`]), with how much: who asked
//! (the authenticated user, and the impersonated one), what (verb, object reference, URI), from
//! where, the authorization decision, the response code, and at the `Request` and
//! `RequestResponse` levels the objects themselves.
//!
//! Three layers share one record of the request: [`record`] outermost (before authentication,
//! so failed authentications are audited too) writes the events; [`note_authenticated`] after
//! authentication evaluates the policy on the authenticated user and writes `RequestReceived`;
//! [`note_impersonated`] records whom it acts as, and [`note_authorized`] after authorization
//! the decision and the request's object.

pub mod log;
pub mod policy;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::body::Bytes;
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method},
    middleware::Next,
    response::Response,
};
use chrono::{DateTime, SecondsFormat, Utc};
use http_body::Frame;
use serde_json::{Map, Value, json};

use apiary_serve::PeerAddr;

use super::{MAX_REQUEST_BODY_BYTES, auth::UserInfo, authz::request_info};
pub use policy::{Level, Policy, Stage};

tokio::task_local! {
    /// Annotations the request's handlers add to its events ([`annotate`]).
    static ANNOTATIONS: std::cell::RefCell<Map<String, Value>>;
}

/// Adds an annotation to the audit events of the request being handled (as Kubernetes'
/// `audit.AddAuditAnnotation`; admission plugins say what they decided). Nothing without an
/// audit log.
pub fn annotate(key: &str, value: impl Into<String>) {
    let _ = ANNOTATIONS.try_with(|a| {
        a.borrow_mut().insert(key.to_owned(), json!(value.into()));
    });
}

/// The response header that carries a request's audit ID (and the request header a client
/// may set it with).
const AUDIT_ID_HEADER: &str = "audit-id";
/// The largest response object an event copies; larger ones are left out of the event.
const MAX_RESPONSE_OBJECT_BYTES: usize = MAX_REQUEST_BODY_BYTES;

/// The policy and where events go.
#[derive(Debug)]
pub struct Auditor {
    policy: Policy,
    log: log::Log,
}

impl Auditor {
    pub fn new(policy: Policy, log: log::Log) -> Self {
        Self { policy, log }
    }
}

/// Puts `app` behind the outermost audit layer.
pub fn layer(app: axum::Router, auditor: Arc<Auditor>) -> axum::Router {
    app.layer(axum::middleware::from_fn_with_state(auditor, record))
}

/// What the layers learn about one request.
#[derive(Debug)]
struct Record {
    id: String,
    received: DateTime<Utc>,
    request_uri: String,
    info: Arc<request_info::RequestInfo>,
    source_ips: Vec<String>,
    user_agent: Option<String>,
    user: Option<UserInfo>,
    impersonated: Option<UserInfo>,
    decision: Option<policy::Decision>,
    authorized: bool,
    request_object: Option<Value>,
    /// What admission added ([`annotate`]).
    annotations: Map<String, Value>,
}

#[derive(Clone)]
struct Slot {
    auditor: Arc<Auditor>,
    record: Arc<Mutex<Record>>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic elsewhere while holding it leaves a usable record.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, stage: Stage, code: Option<u16>, response: Option<&[u8]>) {
        let line = {
            let record = self.lock();
            event(&record, stage, code, response)
        };
        match serde_json::to_vec(&line) {
            Ok(line) => self.auditor.log.write(line),
            Err(e) => tracing::error!(error = %e, "encoding an audit event"),
        }
    }
}

/// The outermost layer: gives the request its audit ID and writes `ResponseStarted` and
/// `ResponseComplete` as the policy asks.
pub async fn record(
    State(auditor): State<Arc<Auditor>>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(AUDIT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let info = request_info::of(&mut request);
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    let record = Record {
        id: id.clone(),
        received: Utc::now(),
        request_uri: request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |p| p.as_str().to_owned(),
        ),
        info,
        source_ips: source_ips(request.headers(), peer),
        user_agent: request
            .headers()
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        user: None,
        impersonated: None,
        decision: None,
        authorized: false,
        request_object: None,
        annotations: Map::new(),
    };
    let slot = Slot {
        auditor: Arc::clone(&auditor),
        record: Arc::new(Mutex::new(record)),
    };
    request.extensions_mut().insert(slot.clone());
    let (mut response, annotations) = ANNOTATIONS
        .scope(std::cell::RefCell::new(Map::new()), async {
            let response = next.run(request).await;
            (response, ANNOTATIONS.with(|a| a.take()))
        })
        .await;
    slot.lock().annotations = annotations;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(AUDIT_ID_HEADER, value);
    }
    let decision = {
        let mut record = slot.lock();
        // Authentication failed: the policy decides with no user.
        let info = record.info.clone();
        record
            .decision
            .get_or_insert_with(|| auditor.policy.decide(None, &info))
            .clone()
    };
    if decision.level == Level::None {
        return response;
    }
    let code = response.status().as_u16();
    let long_running = slot.lock().info.is_long_running();
    if long_running && decision.records(Stage::ResponseStarted) {
        slot.write(Stage::ResponseStarted, Some(code), None);
    }
    if !decision.records(Stage::ResponseComplete) {
        return response;
    }
    // The response object is copied at RequestResponse (unless it streams); a failure's
    // Status always, for `responseStatus`.
    let object = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/json") || ct.starts_with(apiary_api::protobuf::MEDIA_TYPE)
        });
    let capture =
        object && ((decision.level == Level::RequestResponse && !long_running) || code >= 400);
    let (parts, body) = response.into_parts();
    let body = AuditedBody {
        inner: body,
        finish: Some(Finish {
            slot,
            code,
            captured: capture.then(Vec::new),
        }),
    };
    Response::from_parts(parts, Body::new(body))
}

/// After authentication: the policy's decision on the authenticated user, and `RequestReceived`.
pub async fn note_authenticated(request: Request, next: Next) -> Response {
    if let (Some(slot), Some(user)) = (
        request.extensions().get::<Slot>(),
        request.extensions().get::<UserInfo>(),
    ) {
        let decision = {
            let mut record = slot.lock();
            let decision = slot.auditor.policy.decide(Some(user), &record.info);
            record.user = Some(user.clone());
            record.decision = Some(decision.clone());
            decision
        };
        if decision.records(Stage::RequestReceived) {
            slot.write(Stage::RequestReceived, None, None);
        }
    }
    next.run(request).await
}

/// Impersonation succeeded: the request acts as `user` (recorded whether or not `user` may do
/// what it asks).
pub fn note_impersonated(request: &Request, user: &UserInfo) {
    if let Some(slot) = request.extensions().get::<Slot>() {
        slot.lock().impersonated = Some(user.clone());
    }
}

/// After authorization: the request was allowed; and its object at the `Request` level and
/// above.
pub async fn note_authorized(request: Request, next: Next) -> Response {
    let Some(slot) = request.extensions().get::<Slot>().cloned() else {
        return next.run(request).await;
    };
    let wants_object = {
        let mut record = slot.lock();
        record.authorized = true;
        record
            .decision
            .as_ref()
            .is_some_and(|d| d.level >= Level::Request)
            && matches!(
                *request.method(),
                Method::POST | Method::PUT | Method::PATCH
            )
    };
    if !wants_object {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let (body, object) = read_object(body).await;
    if let Some(mut object) = object {
        let mut record = slot.lock();
        if record
            .decision
            .as_ref()
            .is_some_and(|d| d.omit_managed_fields)
        {
            omit_managed_fields(&mut object);
        }
        record.request_object = Some(object);
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Reads up to the API's body limit to copy the request's object, and gives back a body that
/// yields the same bytes (a larger body is left for the handler to refuse, uncopied).
async fn read_object(mut body: Body) -> (Body, Option<Value>) {
    use futures::StreamExt as _;
    use http_body_util::BodyExt as _;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    chunks.push(data);
                    if total > MAX_REQUEST_BODY_BYTES {
                        let head = futures::stream::iter(chunks.into_iter().map(Ok));
                        let rest = body.into_data_stream();
                        return (Body::from_stream(head.chain(rest)), None);
                    }
                }
            }
            Some(Err(e)) => {
                let head = futures::stream::iter(chunks.into_iter().map(Ok));
                let failed = futures::stream::once(async move { Err::<Bytes, _>(e) });
                return (Body::from_stream(head.chain(failed)), None);
            }
            None => break,
        }
    }
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let object = body_object(&bytes);
    (Body::from(bytes), object)
}

/// A request or response body as the object it carries: Kubernetes protobuf (typed clients
/// send it and may be answered in it), JSON or YAML.
fn body_object(bytes: &[u8]) -> Option<Value> {
    if bytes.starts_with(b"k8s\0") {
        return apiary_api::protobuf::decode(bytes).ok();
    }
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .or_else(|| serde_yaml::from_slice::<Value>(bytes).ok())
        .filter(|v| !v.is_null())
}

/// The response body, passed through; when it ends (or the client goes away) the request's
/// `ResponseComplete` event is written.
struct AuditedBody {
    inner: Body,
    finish: Option<Finish>,
}

struct Finish {
    slot: Slot,
    code: u16,
    /// The response's bytes so far, while they are to be copied.
    captured: Option<Vec<u8>>,
}

impl AuditedBody {
    fn complete(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.slot.write(
                Stage::ResponseComplete,
                Some(finish.code),
                finish.captured.as_deref(),
            );
        }
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(finish)) = (frame.data_ref(), this.finish.as_mut())
                    && let Some(captured) = finish.captured.as_mut()
                {
                    if captured.len() + data.len() > MAX_RESPONSE_OBJECT_BYTES {
                        finish.captured = None;
                    } else {
                        captured.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.complete(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        self.complete();
    }
}

/// The event for `stage` of `record` (`audit.k8s.io/v1` `Event`).
fn event(record: &Record, stage: Stage, code: Option<u16>, response: Option<&[u8]>) -> Value {
    let decision = record.decision.as_ref();
    let level = decision.map_or(Level::None, |d| d.level);
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level,
        "auditID": record.id,
        "stage": stage,
        "requestURI": record.request_uri,
        "verb": record.info.verb,
        "user": record.user.as_ref().map_or_else(|| json!({}), user_json),
        "sourceIPs": record.source_ips,
    });
    if let Some(impersonated) = &record.impersonated {
        event["impersonatedUser"] = user_json(impersonated);
    }
    if let Some(agent) = &record.user_agent {
        event["userAgent"] = json!(agent);
    }
    if record.info.is_resource_request {
        let mut object = Map::new();
        let info = &record.info;
        for (key, value) in [
            ("resource", &info.resource),
            ("namespace", &info.namespace),
            ("name", &info.name),
            ("apiGroup", &info.api_group),
            ("apiVersion", &info.api_version),
            ("subresource", &info.subresource),
        ] {
            if !value.is_empty() {
                object.insert(key.to_owned(), json!(value));
            }
        }
        event["objectRef"] = Value::Object(object);
    }
    if let Some(code) = code {
        let status = response
            .filter(|_| code >= 400)
            .and_then(body_object)
            .filter(|v| v["kind"] == "Status");
        let mut response_status = json!({ "metadata": {}, "code": code });
        if let Some(status) = status {
            for key in ["status", "message", "reason", "details"] {
                if !status[key].is_null() {
                    response_status[key] = status[key].clone();
                }
            }
        }
        event["responseStatus"] = response_status;
    }
    if level >= Level::Request
        && let Some(object) = &record.request_object
    {
        event["requestObject"] = object.clone();
    }
    if level >= Level::RequestResponse
        && stage == Stage::ResponseComplete
        && let Some(mut object) = response.and_then(body_object)
    {
        if decision.is_some_and(|d| d.omit_managed_fields) {
            omit_managed_fields(&mut object);
        }
        event["responseObject"] = object;
    }
    event["requestReceivedTimestamp"] = json!(micro_time(record.received));
    event["stageTimestamp"] = json!(micro_time(Utc::now()));
    let mut annotations = record.annotations.clone();
    if record.authorized {
        annotations.insert("authorization.k8s.io/decision".into(), json!("allow"));
    } else if code == Some(403) && record.user.is_some() {
        annotations.insert("authorization.k8s.io/decision".into(), json!("forbid"));
    }
    if !annotations.is_empty() {
        event["annotations"] = Value::Object(annotations);
    }
    event
}

fn user_json(user: &UserInfo) -> Value {
    let mut value = json!({ "username": user.name });
    if !user.uid.is_empty() {
        value["uid"] = json!(user.uid);
    }
    if !user.groups.is_empty() {
        value["groups"] = json!(user.groups);
    }
    if !user.extra.is_empty() {
        value["extra"] = json!(user.extra);
    }
    value
}

/// Kubernetes' `MicroTime`: RFC 3339 with microseconds.
fn micro_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `X-Forwarded-For`'s addresses, then `X-Real-Ip`, then the connection's peer, without
/// repeats (Kubernetes' `utilnet.SourceIPs`).
fn source_ips(headers: &HeaderMap, peer: Option<SocketAddr>) -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let mut add = |ip: std::net::IpAddr| {
        let ip = ip.to_string();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(forwarded) = header("x-forwarded-for") {
        forwarded
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .for_each(&mut add);
    }
    if let Some(ip) = header("x-real-ip").and_then(|v| v.trim().parse().ok()) {
        add(ip);
    }
    if let Some(peer) = peer {
        add(peer.ip());
    }
    ips
}

/// Drops `metadata.managedFields` from an object and from a list's items.
fn omit_managed_fields(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(omit_managed_fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_come_from_the_proxies_then_the_peer() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        headers.insert("x-real-ip", "10.0.0.2".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        assert_eq!(
            source_ips(&headers, Some(peer)),
            ["10.0.0.1", "10.0.0.2", "127.0.0.1"]
        );
        assert_eq!(source_ips(&HeaderMap::new(), Some(peer)), ["127.0.0.1"]);
    }

    #[test]
    fn events_name_the_user_the_object_and_the_failure() {
        let user = UserInfo {
            name: "jane".into(),
            groups: vec!["dev".into()],
            ..UserInfo::default()
        };
        let record = Record {
            id: "id-1".into(),
            received: Utc::now(),
            request_uri: "/api/v1/namespaces/a/secrets/s".into(),
            info: Arc::new(request_info::parse(
                "GET",
                "/api/v1/namespaces/a/secrets/s",
                None,
                false,
            )),
            source_ips: vec!["127.0.0.1".into()],
            user_agent: Some("kubectl/v1.32.0".into()),
            user: Some(user),
            impersonated: None,
            decision: Some(policy::Decision {
                level: Level::Metadata,
                omit_stages: vec![],
                omit_managed_fields: false,
            }),
            authorized: false,
            request_object: None,
            annotations: Map::new(),
        };
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"secrets \"s\" is forbidden","reason":"Forbidden","code":403}"#;
        let event = event(&record, Stage::ResponseComplete, Some(403), Some(status));
        assert_eq!(
            event["user"],
            json!({"username": "jane", "groups": ["dev"]})
        );
        assert_eq!(event["verb"], "get");
        assert_eq!(
            event["objectRef"],
            json!({"resource": "secrets", "namespace": "a", "name": "s", "apiVersion": "v1"})
        );
        assert_eq!(event["responseStatus"]["reason"], "Forbidden");
        assert_eq!(event["responseStatus"]["code"], 403);
        assert_eq!(
            event["annotations"]["authorization.k8s.io/decision"],
            "forbid"
        );
        assert!(event.get("requestObject").is_none());
        assert!(event["stageTimestamp"].as_str().unwrap().ends_with('Z'));
    }
}
