//! `authentication.k8s.io/v1` reviews, create-only and never stored: SelfSubjectReview (`kubectl
//! auth whoami`: who the request's credentials make its sender) and TokenReview (who a bearer
//! token belongs to, for webhooks and proxies that authenticate through the API server).

use std::sync::Arc;

use axum::{
    Extension,
    body::Bytes,
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse as _, Response},
};
use serde_json::{Map, Value, json};

use super::{super::auth::Tokens, API_AUDIENCE, UserInfo};
use crate::apiserver::{error::ApiError, objects::decode};

const API_VERSION: &str = "authentication.k8s.io/v1";

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`.
pub async fn self_subject_reviews(
    method: Method,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| {
        only_create(&method, "selfsubjectreviews")?;
        // kubectl sends it as protobuf (typed clients prefer it for built-in kinds); a review
        // has nothing to read but its kind.
        decode(&headers, &body)?;
        let user = user.map(|Extension(u)| u).unwrap_or_default();
        Ok(json!({
            "kind": "SelfSubjectReview",
            "apiVersion": API_VERSION,
            "metadata": {"creationTimestamp": null},
            "status": {"userInfo": user_info(&user)},
        }))
    })();
    respond(result)
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`. A token nobody owns is a review with
/// `authenticated` unset (false), not an error, as Kubernetes answers.
pub async fn token_reviews(
    method: Method,
    Extension(tokens): Extension<Arc<Tokens>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(token_review(&method, &tokens, &headers, &body).await)
}

async fn token_review(
    method: &Method,
    tokens: &Tokens,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    {
        only_create(method, "tokenreviews")?;
        // JSON, or protobuf from typed clients.
        let mut review = decode(headers, body)?;
        let token = review["spec"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if token.is_empty() {
            return Err(ApiError::bad_request(
                "token is required for TokenReview in authentication",
            ));
        }
        let requested: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut status = Map::new();
        // No audiences asked for means this API server's. Static tokens are for it only (as
        // Kubernetes' audience-agnostic token authenticators); a service account token for the
        // audiences it was issued for.
        let requested = if requested.is_empty() {
            vec![API_AUDIENCE.to_owned()]
        } else {
            requested
        };
        match tokens.review(&token, &requested).await {
            Some((user, audiences)) => {
                status.insert("authenticated".into(), true.into());
                status.insert("user".into(), user_info(&user));
                status.insert("audiences".into(), json!(audiences));
            }
            None => {
                status.insert("user".into(), json!({}));
            }
        }
        review["kind"] = "TokenReview".into();
        review["apiVersion"] = API_VERSION.into();
        review["metadata"] = json!({"creationTimestamp": null});
        review["status"] = Value::Object(status);
        Ok(review)
    }
}

fn only_create(method: &Method, resource: &str) -> Result<(), ApiError> {
    if method == Method::POST {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(
            &method.as_str().to_lowercase(),
            resource,
        ))
    }
}

fn respond(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(value) => (StatusCode::CREATED, axum::Json(value)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Kubernetes' `authentication/v1.UserInfo`: empty fields are left out.
pub fn user_info(user: &UserInfo) -> Value {
    let mut info = Map::new();
    if !user.name.is_empty() {
        info.insert("username".into(), user.name.clone().into());
    }
    if !user.uid.is_empty() {
        info.insert("uid".into(), user.uid.clone().into());
    }
    if !user.groups.is_empty() {
        info.insert("groups".into(), json!(user.groups));
    }
    if !user.extra.is_empty() {
        info.insert("extra".into(), json!(user.extra));
    }
    Value::Object(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bytes_field, protobuf_body, protobuf_headers};

    #[test]
    fn a_protobuf_token_review_is_read_as_typed_clients_send_it() {
        let mut spec = bytes_field(1, b"t0k3n");
        spec.extend(bytes_field(2, b"vault"));
        let body = protobuf_body(
            "authentication.k8s.io/v1",
            "TokenReview",
            &bytes_field(2, &spec),
        );
        assert_eq!(
            decode(&protobuf_headers(), &body).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "spec": {"token": "t0k3n", "audiences": ["vault"]}})
        );
        assert!(decode(&protobuf_headers(), b"{}").is_err());
    }
}
