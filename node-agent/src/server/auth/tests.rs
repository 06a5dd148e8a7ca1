use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::{
    Extension, Router,
    body::Body,
    http::{Method, Request as HttpRequest},
    routing::any,
};
use tower::ServiceExt as _;

use super::*;

/// The API server as a script: the tokens it knows, what it allows, and how often it was asked.
#[derive(Default)]
struct ScriptedReviews {
    tokens: HashMap<&'static str, User>,
    /// `(user, verb, subresource)` that are allowed.
    allowed: Vec<(&'static str, &'static str, &'static str)>,
    unreachable: AtomicBool,
    token_reviews: AtomicUsize,
    access_reviews: Mutex<Vec<(User, Attributes)>>,
}

#[async_trait::async_trait]
impl Reviews for ScriptedReviews {
    async fn token_review(&self, token: &str) -> Result<Option<User>, ReviewError> {
        self.token_reviews.fetch_add(1, Ordering::SeqCst);
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(ReviewError("connection refused".into()));
        }
        Ok(self.tokens.get(token).cloned())
    }

    async fn access_review(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> Result<bool, ReviewError> {
        self.access_reviews
            .lock()
            .unwrap()
            .push((user.clone(), attributes.clone()));
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(ReviewError("connection refused".into()));
        }
        Ok(self.allowed.iter().any(|(name, verb, subresource)| {
            *name == user.name && *verb == attributes.verb && *subresource == attributes.subresource
        }))
    }
}

fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..User::default()
    }
}

fn scripted() -> Arc<ScriptedReviews> {
    Arc::new(ScriptedReviews {
        tokens: HashMap::from([
            ("alice-token", user("alice", &["dev"])),
            ("bob-token", user("bob", &[])),
        ]),
        allowed: vec![
            ("alice", "get", "proxy"),
            ("alice", "create", "proxy"),
            ("kube-apiserver-kubelet-client", "get", "proxy"),
        ],
        ..ScriptedReviews::default()
    })
}

/// Behind the middleware, a handler that says who it was called for and whether it saw the
/// credential.
fn app(reviews: Arc<ScriptedReviews>) -> Router {
    let auth = Arc::new(Auth::new("n1", reviews));
    Router::new()
        .route(
            "/{*path}",
            any(
                |Extension(user): Extension<User>, headers: HeaderMap| async move {
                    format!(
                        "{} {:?} authorization={}",
                        user.name,
                        user.groups,
                        headers.contains_key(header::AUTHORIZATION)
                    )
                },
            ),
        )
        .layer(axum::middleware::from_fn_with_state(auth, middleware))
}

struct Sent {
    method: Method,
    path: &'static str,
    authorization: Option<&'static str>,
    certificate: Option<User>,
}

fn get(path: &'static str) -> Sent {
    Sent {
        method: Method::GET,
        path,
        authorization: None,
        certificate: None,
    }
}

impl Sent {
    fn token(self, token: &'static str) -> Self {
        Self {
            authorization: Some(token),
            ..self
        }
    }

    async fn to(self, app: &Router) -> (u16, String) {
        let mut request = HttpRequest::builder().method(self.method).uri(self.path);
        if let Some(value) = self.authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let mut request = request.body(Body::empty()).unwrap();
        if let Some(user) = self.certificate {
            request.extensions_mut().insert(ClientCertUser(Some(user)));
        }
        let response = app.clone().oneshot(request).await.unwrap();
        let code = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }
}

#[tokio::test]
async fn no_credential_is_a_401_and_asks_the_api_server_nothing() {
    let reviews = scripted();
    let app = app(Arc::clone(&reviews));
    assert_eq!(
        get("/containerLogs/default/web/app").to(&app).await,
        (401, "Unauthorized".to_owned())
    );
    for malformed in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "alice-token"] {
        assert_eq!(
            get("/metrics").token(malformed).to(&app).await.0,
            401,
            "{malformed}"
        );
    }
    assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 0);
    assert!(reviews.access_reviews.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_token_nobody_owns_is_a_401_and_the_answer_is_kept() {
    let reviews = scripted();
    let app = app(Arc::clone(&reviews));
    for _ in 0..3 {
        assert_eq!(
            get("/apiary/v1/services")
                .token("Bearer stolen")
                .to(&app)
                .await,
            (401, "Unauthorized".to_owned())
        );
    }
    assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 1);
    assert!(reviews.access_reviews.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_user_without_the_right_is_a_403_with_the_kubelets_message() {
    let reviews = scripted();
    let app = app(Arc::clone(&reviews));
    assert_eq!(
        get("/apiary/v1/flows")
            .token("Bearer bob-token")
            .to(&app)
            .await,
        (
            403,
            "Forbidden (user=bob, verb=get, resource=nodes, subresource=proxy)".to_owned()
        )
    );
    // alice may use nodes/proxy, not nodes/metrics.
    assert_eq!(
        get("/metrics").token("Bearer alice-token").to(&app).await,
        (
            403,
            "Forbidden (user=alice, verb=get, resource=nodes, subresource=metrics)".to_owned()
        )
    );
    let delete = Sent {
        method: Method::DELETE,
        ..get("/exec/default/web/app").token("Bearer alice-token")
    };
    assert_eq!(delete.to(&app).await.0, 403);
    // The denial is kept (30 s): asking again does not ask the API server again.
    get("/apiary/v1/flows")
        .token("Bearer bob-token")
        .to(&app)
        .await;
    let asked = reviews.access_reviews.lock().unwrap().clone();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert_eq!(
        asked[0],
        (
            user("bob", &["system:authenticated"]),
            Attributes {
                verb: "get",
                subresource: "proxy",
                name: "n1".into()
            }
        )
    );
}

#[tokio::test]
async fn an_allowed_user_reaches_the_handler_without_the_credential() {
    let reviews = scripted();
    let app = app(Arc::clone(&reviews));
    let (code, body) = get("/containerLogs/default/web/app")
        .token("bearer alice-token")
        .to(&app)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        r#"alice ["dev", "system:authenticated"] authorization=false"#
    );
    let post = Sent {
        method: Method::POST,
        ..get("/exec/default/web/app").token("Bearer alice-token")
    };
    assert_eq!(post.to(&app).await.0, 200);
    // One TokenReview for both requests; one SubjectAccessReview per distinct question.
    assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 1);
    get("/containerLogs/default/web/app")
        .token("Bearer alice-token")
        .to(&app)
        .await;
    assert_eq!(reviews.access_reviews.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_verified_certificate_is_the_user_before_any_token() {
    let reviews = scripted();
    let app = app(Arc::clone(&reviews));
    let apiserver = Sent {
        certificate: Some(user(
            "kube-apiserver-kubelet-client",
            &["system:authenticated"],
        )),
        ..get("/exec/default/web/app").token("Bearer bob-token")
    };
    let (code, body) = apiserver.to(&app).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("kube-apiserver-kubelet-client "), "{body}");
    assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 0);
    // A certificate user without the right is refused like any other.
    let stranger = Sent {
        certificate: Some(user("mallory", &["system:authenticated"])),
        ..get("/exec/default/web/app")
    };
    assert_eq!(
        stranger.to(&app).await,
        (
            403,
            "Forbidden (user=mallory, verb=get, resource=nodes, subresource=proxy)".to_owned()
        )
    );
}

#[tokio::test]
async fn an_api_server_that_cannot_answer_refuses_and_is_asked_again() {
    let reviews = scripted();
    reviews.unreachable.store(true, Ordering::SeqCst);
    let app = app(Arc::clone(&reviews));
    for _ in 0..2 {
        assert_eq!(
            get("/metrics").token("Bearer alice-token").to(&app).await.0,
            401
        );
    }
    assert_eq!(reviews.token_reviews.load(Ordering::SeqCst), 2);
    let certified = Sent {
        certificate: Some(user("alice", &["system:authenticated"])),
        ..get("/containerLogs/default/web/app")
    };
    assert_eq!(
        certified.to(&app).await,
        (
            500,
            "Authorization error (user=alice, verb=get, resource=nodes, subresource=proxy)"
                .to_owned()
        )
    );
    // Once it answers again, so do the requests.
    reviews.unreachable.store(false, Ordering::SeqCst);
    assert_eq!(
        get("/containerLogs/default/web/app")
            .token("Bearer alice-token")
            .to(&app)
            .await
            .0,
        200
    );
}

#[test]
fn a_certificate_names_its_common_name_in_its_organizations() {
    let cert = |subject: &[(rcgen::DnType, &str)]| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    };
    let node = User::of_certificate(&cert(&[
        (rcgen::DnType::OrganizationName, "system:nodes"),
        (rcgen::DnType::CommonName, "system:node:n1"),
    ]))
    .unwrap();
    assert_eq!(node.name, "system:node:n1");
    assert_eq!(node.groups, ["system:nodes", "system:authenticated"]);
    assert_eq!(
        User::of_certificate(&cert(&[(rcgen::DnType::OrganizationName, "dev")])),
        None
    );
}

/// An agent with no pods.
struct NoPods;

#[async_trait::async_trait]
impl crate::server::PodStreams for NoPods {
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        _: &str,
        _: crate::server::LogRequest,
    ) -> Result<
        futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
        crate::server::StreamError,
    > {
        Err(crate::server::StreamError::PodNotFound {
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }

    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        _: &str,
        _: crate::server::ExecRequest,
    ) -> Result<crate::server::ExecSession, crate::server::StreamError> {
        Err(crate::server::StreamError::PodNotFound {
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }

    async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        _: &str,
        _: crate::server::ExecRequest,
    ) -> Result<crate::server::ExecSession, crate::server::StreamError> {
        Err(crate::server::StreamError::PodNotFound {
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }

    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<std::sync::Arc<dyn crate::server::PortDialer>, crate::server::StreamError> {
        Err(crate::server::StreamError::PodNotFound {
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }
}

#[tokio::test]
async fn every_endpoint_of_the_server_is_behind_authentication_and_authorization() {
    let reviews = scripted();
    let auth = Arc::new(Auth::new("n1", Arc::clone(&reviews) as Arc<dyn Reviews>));
    let pins = tempfile::tempdir().unwrap();
    let app = crate::server::router(
        auth,
        Arc::new(NoPods),
        crate::server::DataplaneViews {
            services: Arc::new(crate::server::PinnedServices {
                pin_dir: pins.path().to_owned(),
                names: Arc::default(),
            }),
            flows: crate::server::FlowLog::default(),
            tracer: None,
            stats: crate::stats::Latest::default(),
        },
    );
    let endpoints = [
        (Method::GET, "/containerLogs/default/web/app?follow=true"),
        (Method::GET, "/exec/default/web/app?command=sh&stdout=true"),
        (Method::POST, "/exec/default/web/app?command=sh&stdout=true"),
        (Method::GET, "/apiary/v1/services"),
        (Method::GET, "/apiary/v1/flows"),
        (
            Method::GET,
            "/apiary/v1/policy/trace?from=a/b&to=c/d&port=80",
        ),
        (Method::GET, "/metrics"),
        (Method::GET, "/metrics/resource"),
        (Method::GET, "/stats/summary"),
        (Method::GET, "/"),
        (Method::GET, "/no/such/path"),
    ];
    for (method, path) in endpoints {
        let send = |authorization: Option<&str>| {
            let mut request = HttpRequest::builder().method(method.clone()).uri(path);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let request = request.body(Body::empty()).unwrap();
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let code = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (code, String::from_utf8_lossy(&body).into_owned())
            }
        };
        assert_eq!(
            send(None).await,
            (401, "Unauthorized".into()),
            "{method} {path}"
        );
        assert_eq!(
            send(Some("Bearer not-a-token")).await,
            (401, "Unauthorized".into()),
            "{method} {path}"
        );
        let (code, body) = send(Some("Bearer bob-token")).await;
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert!(body.starts_with("Forbidden (user=bob, verb="), "{body}");
        // A user with the right gets past: the handler's own answer (no pods here, no maps).
        let (code, body) = send(Some("Bearer alice-token")).await;
        if path.starts_with("/metrics") || path.starts_with("/stats") {
            assert_eq!(
                code, 403,
                "alice has nodes/proxy, not nodes/metrics or nodes/stats: {body}"
            );
        } else {
            assert!(
                ![401, 403].contains(&code),
                "{method} {path}: {code} {body}"
            );
        }
    }
}
