//! Bearer-token authentication: a request with `Authorization: Bearer <admin token>` is the
//! admin's; one without credentials is anonymous (`system:anonymous` in
//! `system:unauthenticated`, left to authorization); a wrong token is a 401. Every request
//! carries its [`UserInfo`] as a request extension, for authorization and auditing.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use super::error::ApiError;

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

/// The tokens the server accepts.
#[derive(Debug)]
pub struct Tokens {
    admin: String,
}

impl Tokens {
    pub fn new(admin: String) -> Self {
        Self { admin }
    }

    fn accepts(&self, presented: &str) -> bool {
        // Constant time in the token's contents, so timing leaks nothing about it.
        let (a, b) = (self.admin.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Rejects requests with an invalid token with a Kubernetes `401 Unauthorized` Status; requests
/// without credentials go on as [`UserInfo::anonymous`] (gRPC ones are refused).
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if tokens.accepts(token.trim()) => {
            let mut request = request;
            request.extensions_mut().insert(UserInfo::admin());
            next.run(request).await
        }
        _ if is_grpc(&request) => grpc_unauthenticated(),
        None if !request
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION) =>
        {
            let mut request = request;
            request.extensions_mut().insert(UserInfo::anonymous());
            next.run(request).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
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
    fn only_the_exact_token_is_accepted() {
        let tokens = Tokens::new("abc123".into());
        assert!(tokens.accepts("abc123"));
        assert!(!tokens.accepts("abc124"));
        assert!(!tokens.accepts("abc12"));
        assert!(!tokens.accepts(""));
    }
}
