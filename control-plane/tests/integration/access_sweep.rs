//! Every endpoint of the API server, as discovery lists it (every resource and subresource, with
//! every verb it serves) and the non-resource paths, asked by three callers who must not get
//! through: a bad token (401), no credentials (anonymous: 403 but for the public health and
//! version paths) and an authenticated user without a role (403 but for discovery and the
//! self-reviews every user may make). Never a 200 where Kubernetes refuses, never a 5xx; and
//! the admin, who gets through, sends the same junk and gets client errors, never a 5xx.

use crate::support;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;
use support::ControlPlane;

const TOKENS: &str = "nobody-token,nobody,1001,dev\n";

/// What kube-apiserver's default policy lets anyone read (`system:public-info-viewer`).
const PUBLIC: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

struct Caller {
    name: &'static str,
    token: Option<&'static str>,
}

/// Stands for the cluster token, read at run time.
const ADMIN: &str = "<admin>";

const CALLERS: [Caller; 4] = [
    Caller {
        name: "a bad token",
        token: Some("not-a-token"),
    },
    Caller {
        name: "anonymous",
        token: None,
    },
    Caller {
        name: "a user without roles",
        token: Some("nobody-token"),
    },
    // Last, as its deletes go through: the same junk bodies get a client error, never a 5xx.
    Caller {
        name: "the admin",
        token: Some(ADMIN),
    },
];

fn server(cp: &ControlPlane) -> String {
    format!("https://{}", cp.server_addr())
}

/// `(method, path)` for every verb of every resource and subresource discovery lists.
async fn resource_requests(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> Vec<(Method, String)> {
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let mut group_versions = vec!["/api/v1".to_owned()];
    let groups = get("/apis".to_owned()).await;
    for group in groups["groups"].as_array().unwrap() {
        for version in group["versions"].as_array().unwrap() {
            group_versions.push(format!(
                "/apis/{}",
                version["groupVersion"].as_str().unwrap()
            ));
        }
    }
    let mut requests = Vec::new();
    for prefix in group_versions {
        let list = get(prefix.clone()).await;
        for resource in list["resources"].as_array().unwrap() {
            let name = resource["name"].as_str().unwrap();
            let namespaced = resource["namespaced"].as_bool().unwrap();
            let scope = if namespaced {
                format!("{prefix}/namespaces/default")
            } else {
                prefix.clone()
            };
            let verbs: BTreeSet<&str> = resource["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let (plural, sub) = match name.split_once('/') {
                Some((plural, sub)) => (plural, Some(sub)),
                None => (name, None),
            };
            let collection = format!("{scope}/{plural}");
            let item = match sub {
                Some(sub) => format!("{collection}/x/{sub}"),
                None => format!("{collection}/x"),
            };
            for verb in &verbs {
                let request = match (*verb, sub) {
                    ("list", None) => (Method::GET, collection.clone()),
                    ("watch", None) => (Method::GET, format!("{collection}?watch=true")),
                    ("create", None) => (Method::POST, collection.clone()),
                    ("deletecollection", None) => (Method::DELETE, collection.clone()),
                    ("get", _) => (Method::GET, item.clone()),
                    ("update", _) => (Method::PUT, item.clone()),
                    ("patch", _) => (Method::PATCH, item.clone()),
                    ("delete", _) => (Method::DELETE, item.clone()),
                    ("create", Some(_)) => (Method::POST, item.clone()),
                    _ => continue,
                };
                requests.push(request);
            }
            // Subresources without verbs in discovery (the streams) are still endpoints.
            if verbs.is_empty() {
                requests.push((Method::GET, item.clone()));
                requests.push((Method::POST, item));
            }
        }
    }
    // Streams and proxies kube-apiserver serves beside the listed verbs.
    for path in [
        "/api/v1/namespaces/default/pods/x/log",
        "/api/v1/namespaces/default/pods/x/exec?command=sh&stdout=true",
        "/api/v1/nodes/x/proxy/",
        "/api/v1/nodes/x/proxy/containerLogs/default/x/c",
    ] {
        requests.push((Method::GET, path.to_owned()));
    }
    requests.push((
        Method::POST,
        "/api/v1/namespaces/default/pods/x/exec?command=sh&stdout=true".to_owned(),
    ));
    requests
}

/// Non-resource paths: discovery, OpenAPI, OIDC discovery, health, and paths nothing serves.
const NON_RESOURCE: &[&str] = &[
    "/api",
    "/api/v1",
    "/apis",
    "/apis/apps",
    "/apis/apps/v1",
    "/openapi/v2",
    "/openapi/v3",
    "/openapi/v3/api/v1",
    "/.well-known/openid-configuration",
    "/openid/v1/jwks",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/metrics",
    "/logs/",
    "/foo",
];

/// What `caller` may get from `(method, path)` instead of a refusal, per Kubernetes' default
/// policy: public info for everyone, discovery and self-reviews for authenticated users.
fn allowed(caller: &Caller, method: &Method, path: &str) -> bool {
    let path_only = path.split('?').next().unwrap();
    match caller.name {
        "a bad token" => false,
        "anonymous" => *method == Method::GET && PUBLIC.contains(&path_only),
        _ => {
            (*method == Method::GET
                && (PUBLIC.contains(&path_only)
                    || path_only == "/api"
                    || path_only.starts_with("/api/v1") && path_only.matches('/').count() == 2
                    || path_only == "/apis"
                    || (path_only.starts_with("/apis/") && path_only.matches('/').count() <= 3)
                    || path_only.starts_with("/openapi")))
                || (*method == Method::POST
                    && [
                        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                    ]
                    .contains(&path_only))
        }
    }
}

#[test]
fn no_endpoint_lets_an_unauthorized_caller_through() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, TOKENS).unwrap();
    let cp = ControlPlane::start_with(&["--token-auth-file", tokens.to_str().unwrap()]);
    let base = server(&cp);
    let client = cp.https_client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = cp.token();
    let failures = runtime.block_on(async {
        let mut requests = resource_requests(&client, &base, &admin).await;
        assert!(
            requests.len() > 200,
            "discovery lists too little: {}",
            requests.len()
        );
        requests.extend(NON_RESOURCE.iter().map(|p| (Method::GET, (*p).to_owned())));
        let mut failures = Vec::new();
        let mut asked = 0;
        for caller in &CALLERS {
            for (method, path) in &requests {
                let request = client
                    .request(method.clone(), format!("{base}{path}"))
                    .timeout(std::time::Duration::from_secs(10));
                let mut request = match caller.token {
                    Some(ADMIN) => request.bearer_auth(&admin),
                    Some(token) => request.bearer_auth(token),
                    None => request,
                };
                if [Method::POST, Method::PUT, Method::PATCH].contains(method) {
                    let content_type = if *method == Method::PATCH {
                        "application/merge-patch+json"
                    } else {
                        "application/json"
                    };
                    request = request.header("content-type", content_type).body(
                        if caller.name == "the admin" {
                            // Not even JSON: the decoder's error, not the server's.
                            b"\x00\xff{\"apiVersion\": [".to_vec()
                        } else {
                            br#"{"apiVersion":"v1","kind":"Status","metadata":{"name":"x"}}"#
                                .to_vec()
                        },
                    );
                }
                let code = match request.send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(e) if e.is_timeout() && path.contains("watch=true") => 200,
                    Err(e) => panic!("{} {method} {path}: {e}", caller.name),
                };
                asked += 1;
                let expected: &[u16] = match (caller.name, allowed(caller, method, path)) {
                    ("a bad token", _) => &[401],
                    ("the admin", _) if code < 500 => continue,
                    ("the admin", _) => &[],
                    (_, false) => &[403],
                    // Allowed: whatever the endpoint answers, but never a server error.
                    (_, true) => &[200, 201, 400, 404, 405, 406, 415, 422],
                };
                if !expected.contains(&code) {
                    failures.push(format!(
                        "{} {method} {path}: {code}, expected {expected:?}",
                        caller.name
                    ));
                }
            }
        }
        eprintln!("asked {asked} requests");
        failures
    });
    assert!(
        failures.is_empty(),
        "{} refused requests got through or failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
