//! End-to-end: Kubernetes protobuf on the wire, as typed Go clients speak it: request bodies
//! decoded, responses (objects, lists and `Status` errors) encoded when `Accept` prefers
//! protobuf, JSON otherwise.

use crate::support;

use apiary_api::protobuf;
use serde_json::{Value, json};
use support::ControlPlane;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const TYPED_CLIENT_ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

struct Answer {
    code: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn protobuf(&self) -> Value {
        assert_eq!(
            self.content_type,
            PROTOBUF,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        protobuf::decode(&self.body).unwrap()
    }

    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn request(
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    accept: &str,
    body: Option<Vec<u8>>,
) -> Answer {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut builder = cp
            .https_client()
            .request(method, format!("https://{}{path}", cp.server_addr()))
            .bearer_auth(cp.token())
            .header("accept", accept);
        if let Some(body) = body {
            builder = builder.header("content-type", PROTOBUF).body(body);
        }
        let response = builder.send().await.unwrap();
        Answer {
            code: response.status().as_u16(),
            content_type: response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    })
}

fn configmap(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "labels": { "app": "web" } },
        "data": { "a": "b" },
        "binaryData": { "bin": "AAEC" },
    })
}

#[test]
fn a_protobuf_client_gets_protobuf_objects_lists_and_errors() {
    let cp = ControlPlane::start();
    let body = protobuf::encode(&configmap("settings")).unwrap();
    let created = request(
        &cp,
        reqwest::Method::POST,
        "/api/v1/namespaces/default/configmaps",
        TYPED_CLIENT_ACCEPT,
        Some(body),
    );
    assert_eq!(created.code, 201);
    let created = created.protobuf();
    assert_eq!(created["data"], json!({ "a": "b" }));
    assert_eq!(created["binaryData"], json!({ "bin": "AAEC" }));
    assert!(created["metadata"]["uid"].is_string(), "{created}");
    assert!(created["metadata"]["creationTimestamp"].is_string());

    let fetched = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces/default/configmaps/settings",
        TYPED_CLIENT_ACCEPT,
        None,
    )
    .protobuf();
    assert_eq!(
        fetched["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let list = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dweb",
        TYPED_CLIENT_ACCEPT,
        None,
    )
    .protobuf();
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"][0]["metadata"]["name"], "settings", "{list}");

    // kube-apiserver sends its Status errors in protobuf to a client that prefers it.
    let missing = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces/default/configmaps/nothing",
        TYPED_CLIENT_ACCEPT,
        None,
    );
    assert_eq!(missing.code, 404);
    let status = missing.protobuf();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);

    // A DeleteOptions body in protobuf, as typed clients' Delete sends it.
    let options = protobuf::encode(&json!({
        "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "propagationPolicy": "Background",
    }))
    .unwrap();
    let deleted = request(
        &cp,
        reqwest::Method::DELETE,
        "/api/v1/namespaces/default/configmaps/settings",
        TYPED_CLIENT_ACCEPT,
        Some(options),
    );
    assert_eq!(
        deleted.code,
        200,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
}

#[test]
fn json_clients_and_tables_still_get_json() {
    let cp = ControlPlane::start();
    let body = protobuf::encode(&configmap("settings")).unwrap();
    for accept in [
        "application/json",
        "*/*",
        "application/json, application/vnd.kubernetes.protobuf",
    ] {
        let answer = request(
            &cp,
            reqwest::Method::GET,
            "/api/v1/namespaces/default/configmaps",
            accept,
            None,
        );
        assert_eq!(answer.json()["kind"], "ConfigMapList", "{accept}");
    }
    // A protobuf request body with a JSON answer.
    let created = request(
        &cp,
        reqwest::Method::POST,
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        Some(body),
    );
    assert_eq!(created.code, 201);
    assert_eq!(created.json()["data"], json!({ "a": "b" }));
    let table = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces/default/configmaps",
        "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
        None,
    );
    assert_eq!(table.json()["kind"], "Table");
    // A watch streams JSON lines even to a protobuf client, which picks its decoder from the
    // response's Content-Type.
    let watch = request(
        &cp,
        reqwest::Method::GET,
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
        TYPED_CLIENT_ACCEPT,
        None,
    );
    assert!(
        watch.content_type.starts_with("application/json"),
        "{}",
        watch.content_type
    );
    let names: Vec<Value> = watch
        .body
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let event: Value = serde_json::from_slice(line).unwrap();
            event["object"]["metadata"]["name"].clone()
        })
        .collect();
    assert!(names.contains(&json!("settings")), "{names:?}");
}

#[test]
fn a_malformed_protobuf_body_is_a_bad_request() {
    let cp = ControlPlane::start();
    let mut body = protobuf::encode(&configmap("settings")).unwrap();
    body.truncate(body.len() - 3);
    let answer = request(
        &cp,
        reqwest::Method::POST,
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        Some(body),
    );
    assert_eq!(answer.code, 400);
    let status = answer.json();
    assert!(
        status["message"].as_str().unwrap().contains("protobuf"),
        "{status}"
    );
}
