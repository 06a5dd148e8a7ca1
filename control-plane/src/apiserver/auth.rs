//! Authentication: a verified client certificate (see [`super::authn::x509`]) or
//! `Authorization: Bearer <token>` with the cluster token, a token of `--token-auth-file` or a
//! service account token, tried in Kubernetes' order (certificate first). A request without
//! credentials is anonymous (`system:anonymous` in `system:unauthenticated`, left to
//! authorization); a token that authenticates no one is a 401. Every request carries its
//! [`UserInfo`] as a request extension, for authorization and auditing.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use super::{
    authn::{API_AUDIENCE, service_account, token_file::TokenFile, x509::ClientCertUser},
    error::ApiError,
};

/// Who made a request, as Kubernetes' `user.Info`: what authentication established and what
/// authorization decides on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The cluster administrator (the admin token's user): `system:masters`, which Kubernetes'
    /// authorizer lets do anything.
    pub fn admin() -> Self {
        Self {
            name: "admin".to_owned(),
            groups: vec![
                "system:masters".to_owned(),
                "system:authenticated".to_owned(),
            ],
            ..Self::default()
        }
    }

    /// The user of a request without credentials, as Kubernetes' anonymous authenticator.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".to_owned(),
            groups: vec!["system:unauthenticated".to_owned()],
            ..Self::default()
        }
    }
}

/// The bearer tokens the server accepts: the cluster token (the admin's), a token file's, and
/// service account tokens.
#[derive(Debug)]
pub struct Tokens {
    admin: String,
    file: TokenFile,
    service_accounts: Option<ServiceAccounts>,
    /// Where bootstrap token Secrets are read from; none: bootstrap tokens are not accepted.
    bootstrap_tokens: Option<BootstrapTokens>,
}

/// The store bootstrap token Secrets are read from.
struct BootstrapTokens(Arc<dyn crate::store::Store>);

impl std::fmt::Debug for BootstrapTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapTokens")
    }
}

/// What verifies service account tokens: the issuer's key, and the store that says whether the
/// account (and pod) a token names still exist.
pub struct ServiceAccounts {
    pub issuer: Arc<service_account::Issuer>,
    pub store: Arc<dyn crate::store::Store>,
}

impl std::fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.issuer.fmt(f)
    }
}

impl Tokens {
    pub fn new(admin: String) -> Self {
        Self {
            admin,
            file: TokenFile::default(),
            service_accounts: None,
            bootstrap_tokens: None,
        }
    }

    /// Also accepts bootstrap tokens whose Secrets `store` holds.
    pub fn with_bootstrap_tokens(self, store: Arc<dyn crate::store::Store>) -> Self {
        Self {
            bootstrap_tokens: Some(BootstrapTokens(store)),
            ..self
        }
    }

    /// Also accepts service account tokens `issuer` signed.
    pub fn with_service_accounts(self, service_accounts: ServiceAccounts) -> Self {
        Self {
            service_accounts: Some(service_accounts),
            ..self
        }
    }

    /// Also accepts the tokens of `file` (`--token-auth-file`).
    pub fn with_file(self, file: TokenFile) -> Self {
        Self { file, ..self }
    }

    /// The user `presented` belongs to, if any, when it is meant for this API server.
    pub async fn authenticate(&self, presented: &str) -> Option<UserInfo> {
        let audiences = [API_AUDIENCE.to_owned()];
        self.review(presented, &audiences)
            .await
            .map(|(user, _)| user)
    }

    /// The user `presented` belongs to and the audiences among `audiences` it is valid for
    /// (none: not authenticated). Static tokens are valid for this API server's audience only;
    /// a service account token for those it was issued for.
    pub async fn review(
        &self,
        presented: &str,
        audiences: &[String],
    ) -> Option<(UserInfo, Vec<String>)> {
        if let Some(sa) = &self.service_accounts
            && let Some(verified) = sa.issuer.verify(presented, chrono::Utc::now().timestamp())
        {
            let matching: Vec<String> = audiences
                .iter()
                .filter(|a| verified.audiences.contains(a))
                .cloned()
                .collect();
            if matching.is_empty()
                || !service_account::still_bound(sa.store.as_ref(), &verified, presented).await
            {
                return None;
            }
            return Some((verified.user, matching));
        }
        if !audiences.iter().any(|a| a == API_AUDIENCE) {
            return None;
        }
        let user = if !self.admin.is_empty() && self.accepts(presented) {
            UserInfo::admin()
        } else if let Some(user) = self.file.user(presented) {
            user.clone()
        } else {
            let store = self.bootstrap_tokens.as_ref()?;
            super::authn::bootstrap_token::authenticate(store.0.as_ref(), presented).await?
        };
        Some((user, vec![API_AUDIENCE.to_owned()]))
    }

    fn accepts(&self, presented: &str) -> bool {
        // Constant time in the token's contents, so timing leaks nothing about it.
        let (a, b) = (self.admin.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Authenticates a request ([`UserInfo`] as an extension): a verified client certificate wins
/// over a token, as in Kubernetes' authenticator order. Requests without credentials go on as
/// [`UserInfo::anonymous`] (gRPC ones are refused); a token that authenticates no one is a
/// Kubernetes `401 Unauthorized` Status.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let has_credentials = request
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION);
    let user = match request.extensions().get::<ClientCertUser>() {
        Some(ClientCertUser(user)) => Some(user.clone()),
        None => match request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
        {
            Some(token) => tokens.authenticate(token.trim()).await,
            None => None,
        },
    };
    match user {
        Some(user) => {
            let mut request = request;
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None if is_grpc(&request) => grpc_unauthenticated(),
        None if !has_credentials => {
            let mut request = request;
            request.extensions_mut().insert(UserInfo::anonymous());
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is case-insensitive, as
/// kube-apiserver reads it: the official Python client's in-cluster configuration sends
/// `bearer <token>`.
fn bearer_token(header: &str) -> Option<&str> {
    let mut parts = header.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// gRPC clients read failures from trailers-only responses, not HTTP status codes.
fn grpc_unauthenticated() -> Response {
    Response::builder()
        .status(axum::http::StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", "16")
        .header("grpc-message", "Unauthorized")
        .body(axum::body::Body::empty())
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_as_the_python_client_sends_it() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc extra"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn only_the_exact_token_is_accepted() {
        let tokens = Tokens::new("abc123".into());
        assert!(tokens.accepts("abc123"));
        assert!(!tokens.accepts("abc124"));
        assert!(!tokens.accepts("abc12"));
        assert!(!tokens.accepts(""));
    }

    #[tokio::test]
    async fn token_file_users_authenticate_and_an_empty_cluster_token_accepts_nothing() {
        let file = TokenFile::parse("t1,jane,1001,dev\n").unwrap();
        let tokens = Tokens::new(String::new()).with_file(file);
        assert_eq!(tokens.authenticate("").await, None);
        let jane = tokens.authenticate("t1").await.unwrap();
        assert_eq!(jane.name, "jane");
        assert_eq!(jane.groups, ["dev", "system:authenticated"]);
        assert_eq!(
            Tokens::new("abc".into()).authenticate("abc").await,
            Some(UserInfo::admin())
        );
    }
}
