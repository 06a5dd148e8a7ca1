//! Who may use the agent's API, decided as the kubelet's webhook mode does (`--anonymous-auth=false
//! --authentication-token-webhook --authorization-mode=Webhook`): every request is authenticated
//! — a client certificate the TLS handshake verified against the cluster CA (its common name is
//! the user, its organizations the groups), else a bearer token the API server vouches for in a
//! TokenReview — and then authorized by the API server in a SubjectAccessReview of the
//! request's [`Attributes`] (a verb on the node's `nodes/proxy`, `nodes/log` …). No credential or
//! one nobody owns is a 401, a refusal a 403, both with the kubelet's plain-text bodies.
//!
//! The reviews go out with whatever credentials the agent holds for the API server
//! ([`Reviews`]); their answers are kept for the kubelet's default times ([`cache`]).

pub mod attributes;
mod cache;
pub mod webhook;

use std::{collections::BTreeMap, num::NonZeroUsize, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use sha2::{Digest as _, Sha256};

pub use attributes::Attributes;
use cache::ExpiringCache;

/// How long a TokenReview's answer is kept, either way (the kubelet's
/// `authentication.webhook.cacheTTL`).
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long an allowed SubjectAccessReview is kept (`authorization.webhook.cacheAuthorizedTTL`).
pub const AUTHORIZED_TTL: Duration = Duration::from_secs(300);
/// How long a denied one is kept (`authorization.webhook.cacheUnauthorizedTTL`).
pub const UNAUTHORIZED_TTL: Duration = Duration::from_secs(30);
/// The most answers of each kind kept.
const CACHE_ENTRIES: NonZeroUsize = NonZeroUsize::new(4096).expect("not zero");

/// The group every authenticated user is in, as Kubernetes adds it.
const AUTHENTICATED: &str = "system:authenticated";

/// Who made a request, as Kubernetes' `user.Info`: what a SubjectAccessReview names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The user a verified client certificate (DER) names, as Kubernetes'
    /// `CommonNameUserConversion`: the subject's (last) common name, its organizations as
    /// groups. `None` without a common name: such a certificate authenticates no one.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .last()
            .filter(|name| !name.is_empty())?
            .to_owned();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_owned)
            .collect();
        Some(
            Self {
                name,
                groups,
                ..Self::default()
            }
            .authenticated(),
        )
    }

    /// The user with [`AUTHENTICATED`] among its groups (once, last).
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }
}

/// The user of a connection's client certificate, which the handshake verified against the
/// cluster CA: the server puts it on every request of the connection (`None`: no certificate,
/// or one naming no user).
#[derive(Clone, Debug, Default)]
pub struct ClientCertUser(pub Option<User>);

/// The API server could not answer a review (unreachable, refused the agent's credentials, a
/// malformed answer); retryable. The message says which.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(pub String);

/// The API server's reviews, which decide for the agent.
#[async_trait::async_trait]
pub trait Reviews: Send + Sync + 'static {
    /// A TokenReview of `token` (for the API server's own audiences): its user, or `None` when
    /// it authenticates no one.
    async fn token_review(&self, token: &str) -> Result<Option<User>, ReviewError>;

    /// A SubjectAccessReview: whether `user` may do what `attributes` say.
    async fn access_review(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> Result<bool, ReviewError>;
}

/// Why a request is refused, as the kubelet answers it.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No credential, or none that authenticates (nor could be checked): 401.
    Unauthenticated,
    /// 403, naming what was asked.
    Forbidden(User, Attributes),
    /// The authorizer could not answer: 500, naming what was asked.
    AuthorizationError(User, Attributes),
}

impl Refusal {
    fn into_response(self) -> Response {
        let describe = |user: &User, a: &Attributes| {
            format!(
                "(user={}, verb={}, resource=nodes, subresource={})",
                user.name, a.verb, a.subresource
            )
        };
        let (code, body) = match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized".to_owned()),
            Self::Forbidden(user, a) => (
                StatusCode::FORBIDDEN,
                format!("Forbidden {}", describe(&user, &a)),
            ),
            Self::AuthorizationError(user, a) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Authorization error {}", describe(&user, &a)),
            ),
        };
        (code, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
    }
}

/// Authentication and authorization of the requests to one node's agent.
pub struct Auth {
    node_name: String,
    reviews: Arc<dyn Reviews>,
    /// TokenReview answers by the token's SHA-256 (the tokens themselves are not kept).
    tokens: ExpiringCache<[u8; 32], Option<User>>,
    decisions: ExpiringCache<(User, Attributes), bool>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// For the agent of node `node_name`, asking `reviews`.
    pub fn new(node_name: impl Into<String>, reviews: Arc<dyn Reviews>) -> Self {
        Self {
            node_name: node_name.into(),
            reviews,
            tokens: ExpiringCache::new(CACHE_ENTRIES),
            decisions: ExpiringCache::new(CACHE_ENTRIES),
        }
    }

    /// The request's user: its certificate's, else its bearer token's.
    async fn authenticate(
        &self,
        certificate: Option<&User>,
        headers: &HeaderMap,
    ) -> Result<User, Refusal> {
        if let Some(user) = certificate {
            return Ok(user.clone());
        }
        let token = bearer_token(headers).ok_or(Refusal::Unauthenticated)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let user = match self.tokens.get(&key) {
            Some(user) => user,
            None => {
                // An error is not kept: the next request asks again.
                let user = self.reviews.token_review(token).await.map_err(|e| {
                    tracing::warn!(error = %e, "a TokenReview failed");
                    Refusal::Unauthenticated
                })?;
                self.tokens.insert(key, user.clone(), TOKEN_TTL);
                user
            }
        };
        user.map(User::authenticated)
            .ok_or(Refusal::Unauthenticated)
    }

    async fn authorize(&self, user: User, attributes: Attributes) -> Result<(), Refusal> {
        let key = (user, attributes);
        let allowed = match self.decisions.get(&key) {
            Some(allowed) => allowed,
            None => {
                let (user, attributes) = &key;
                let allowed = match self.reviews.access_review(user, attributes).await {
                    Ok(allowed) => allowed,
                    Err(e) => {
                        tracing::warn!(error = %e, user = user.name, "a SubjectAccessReview failed");
                        let (user, attributes) = key;
                        return Err(Refusal::AuthorizationError(user, attributes));
                    }
                };
                let ttl = if allowed {
                    AUTHORIZED_TTL
                } else {
                    UNAUTHORIZED_TTL
                };
                self.decisions.insert(key.clone(), allowed, ttl);
                allowed
            }
        };
        match allowed {
            true => Ok(()),
            false => {
                let (user, attributes) = key;
                tracing::debug!(user = user.name, ?attributes, "forbidden");
                Err(Refusal::Forbidden(user, attributes))
            }
        }
    }

    /// Authenticates and authorizes a request: its user, or the answer that refuses it. (Its
    /// parts, not the request: a body is not `Sync`.)
    async fn admit(
        &self,
        certificate: Option<&User>,
        headers: &HeaderMap,
        attributes: Attributes,
    ) -> Result<User, Refusal> {
        let user = self.authenticate(certificate, headers).await?;
        self.authorize(user.clone(), attributes).await?;
        Ok(user)
    }
}

/// `Authorization: Bearer <token>` (the scheme in any case, as Go's `bearertoken`).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The middleware in front of every route: the request goes on with its [`User`] as an
/// extension, and without its `Authorization` header (the handlers never need the credential).
pub async fn middleware(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let certificate = request
        .extensions()
        .get::<ClientCertUser>()
        .and_then(|c| c.0.clone());
    let attributes = Attributes::of(request.method(), request.uri().path(), &auth.node_name);
    match auth
        .admit(certificate.as_ref(), request.headers(), attributes)
        .await
    {
        Ok(user) => {
            request.headers_mut().remove(header::AUTHORIZATION);
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests;
