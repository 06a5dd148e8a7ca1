//! TokenRequest (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, `kubectl create
//! token`): a service account token with an expiry, audiences and optionally the pod it is bound
//! to. Never stored.

use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::API_AUDIENCE;
use crate::apiserver::{
    Api,
    error::ApiError,
    objects::{self, decode},
    path::Target,
};

/// Kubernetes' default and bounds of `spec.expirationSeconds`.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

/// Issues the token `body` asks for, for service account `name` of the target's namespace.
pub async fn create(
    api: &Arc<Api>,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let Some(issuer) = &api.service_account_issuer else {
        return Err(ApiError::no_route("serviceaccounts/token"));
    };
    let namespace = target.namespace.as_deref().unwrap_or_default();
    // JSON, or protobuf from kubectl's typed client.
    let request = decode(headers, body)?;
    let spec = &request["spec"];
    let expiration = spec["expirationSeconds"]
        .as_i64()
        .unwrap_or(DEFAULT_EXPIRATION);
    let invalid = |detail: &str| {
        let error = apiary_api::validation::FieldError::invalid(
            "spec.expirationSeconds",
            expiration,
            detail,
        );
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            &[("spec.expirationSeconds".to_owned(), error.to_string())],
        )
    };
    if expiration < MIN_EXPIRATION {
        return Err(invalid("may not specify a duration less than 10 minutes"));
    }
    if expiration > MAX_EXPIRATION {
        return Err(invalid(
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![API_AUDIENCE.to_owned()],
    };
    let sa = objects::get(
        api,
        &apiary_api::resource::SERVICE_ACCOUNTS,
        Some(namespace),
        name,
    )
    .await?;
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    let mut kubernetes = json!({
        "namespace": namespace,
        "serviceaccount": {"name": name, "uid": sa_uid},
    });
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        if kind != "Pod" {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {kind}"
            )));
        }
        let pod_name = bound["name"].as_str().unwrap_or_default();
        let pod = objects::get(api, &apiary_api::resource::PODS, Some(namespace), pod_name).await?;
        // A pod's token is its own account's: binding another account's token to it would
        // let whoever may read the pod's tokens (its node) act as that account.
        let pod_account = pod["spec"]["serviceAccountName"]
            .as_str()
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        if pod_account != name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
            )));
        }
        let pod_uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        if let Some(uid) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && uid != pod_uid
        {
            return Err(ApiError::conflict(
                "Pod",
                "",
                pod_name,
                &format!(
                    "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        kubernetes["pod"] = json!({"name": pod_name, "uid": pod_uid});
    }
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::seconds(expiration);
    let token = issuer.sign(json!({
        "aud": audiences,
        "exp": expires.timestamp(),
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": kubernetes,
    }));
    let seconds = chrono::SecondsFormat::Secs;
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": now.to_rfc3339_opts(seconds, true),
        },
        "spec": {
            "audiences": audiences,
            "expirationSeconds": expiration,
            "boundObjectRef": if bound.is_object() { bound.clone() } else { Value::Null },
        },
        "status": {
            "token": token,
            "expirationTimestamp": expires.to_rfc3339_opts(seconds, true),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bytes_field, protobuf_body, protobuf_headers};

    #[test]
    fn a_protobuf_token_request_is_read_as_kubectl_sends_it() {
        let mut reference = bytes_field(1, b"Pod");
        reference.extend(bytes_field(3, b"web"));
        let mut spec = bytes_field(1, b"vault");
        spec.extend(bytes_field(3, &reference));
        spec.extend([4 << 3, 0x90, 0x1c]); // 3600
        let body = protobuf_body(
            "authentication.k8s.io/v1",
            "TokenRequest",
            &bytes_field(2, &spec),
        );
        assert_eq!(
            decode(&protobuf_headers(), &body).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": ["vault"], "expirationSeconds": 3600,
                            "boundObjectRef": {"kind": "Pod", "name": "web"}}})
        );
    }
}
