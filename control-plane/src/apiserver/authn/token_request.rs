//! TokenRequest (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, `kubectl create
//! token`): a service account token with an expiry, audiences and optionally the pod it is bound
//! to. Never stored.

use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::API_AUDIENCE;
use crate::apiserver::protobuf::{Field, envelope_raw, fields, is_protobuf};
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
    let request = if is_protobuf(headers) {
        from_protobuf(body)
            .ok_or_else(|| ApiError::bad_request("the TokenRequest's protobuf body is malformed"))?
    } else {
        decode(headers, body)?
    };
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

/// The spec of a protobuf TokenRequest (what kubectl, a typed client, sends), as JSON: the
/// `k8s\0` envelope's `runtime.Unknown.raw` (2) is a TokenRequest whose spec (2) holds
/// `audiences` (1), `boundObjectRef` (3: kind 1, apiVersion 2, name 3, uid 4) and
/// `expirationSeconds` (4).
fn from_protobuf(body: &[u8]) -> Option<Value> {
    let raw = envelope_raw(body)?;
    let string = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let mut spec = json!({});
    for (number, field) in fields(raw)? {
        let (2, Field::Bytes(spec_bytes)) = (number, field) else {
            continue;
        };
        let mut audiences = Vec::new();
        for (number, field) in fields(spec_bytes)? {
            match (number, field) {
                (1, Field::Bytes(b)) => audiences.push(Value::String(string(b)?)),
                (4, Field::Varint(v)) => spec["expirationSeconds"] = json!(v as i64),
                (3, Field::Bytes(b)) => {
                    let mut reference = json!({});
                    for (number, field) in fields(b)? {
                        let key = match number {
                            1 => "kind",
                            2 => "apiVersion",
                            3 => "name",
                            4 => "uid",
                            _ => continue,
                        };
                        if let Field::Bytes(b) = field {
                            reference[key] = Value::String(string(b)?);
                        }
                    }
                    spec["boundObjectRef"] = reference;
                }
                _ => {}
            }
        }
        spec["audiences"] = Value::Array(audiences);
    }
    Some(json!({ "spec": spec }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::protobuf::bytes_field;

    #[test]
    fn a_protobuf_token_request_is_read_as_kubectl_sends_it() {
        let mut reference = bytes_field(1, b"Pod");
        reference.extend(bytes_field(3, b"web"));
        let mut spec = bytes_field(1, b"vault");
        spec.extend(bytes_field(3, &reference));
        spec.extend([4 << 3, 0x90, 0x1c]); // 3600
        let request = bytes_field(2, &spec);
        let mut body = b"k8s\0".to_vec();
        body.extend(bytes_field(2, &request));
        assert_eq!(
            from_protobuf(&body).unwrap(),
            json!({"spec": {"audiences": ["vault"], "expirationSeconds": 3600,
                            "boundObjectRef": {"kind": "Pod", "name": "web"}}})
        );
    }
}
