//! Response content negotiation, as kube-apiserver's: a client whose `Accept` prefers
//! `application/vnd.kubernetes.protobuf` (kubectl's and client-go's typed clients send
//! `application/vnd.kubernetes.protobuf, application/json`) gets objects, lists and `Status`
//! errors in protobuf; everyone else gets JSON.
//!
//! Handlers write JSON; this layer re-encodes a complete JSON body on the way out, so every
//! route (errors from authentication included) negotiates the same way. It leaves as JSON:
//! - streams (watches, logs: bodies without a known length): client-go picks a watch's decoder
//!   from the response's `Content-Type`, so a JSON watch serves a protobuf client too;
//! - tables and other `as=` conversions (kubectl asks for those as JSON);
//! - kinds without a protobuf message (Apiary's own, discovery documents), and anything that
//!   does not encode: JSON is always acceptable to the clients that ask for protobuf.

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::Response,
};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use apiary_api::protobuf;

/// Whether `accept` ranks Kubernetes protobuf above every other type the server can write:
/// media ranges by quality (stable, so equal ones keep the client's order), the first
/// acceptable one wins.
pub fn prefers_protobuf(accept: &str) -> bool {
    let mut ranges: Vec<(f32, &str, bool)> = accept
        .split(',')
        .map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or_default();
            let (mut quality, mut conversion) = (1.0, false);
            for param in parts {
                match param.split_once('=') {
                    Some(("q", q)) => quality = q.parse().unwrap_or(0.0),
                    Some(("as", _)) => conversion = true,
                    _ => {}
                }
            }
            (quality, media_type, conversion)
        })
        .filter(|(quality, _, _)| *quality > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges
        .into_iter()
        .find_map(|(_, media_type, conversion)| match media_type {
            protobuf::MEDIA_TYPE => Some(!conversion),
            "application/json" | "application/yaml" | "application/*" | "*/*" => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// The layer: JSON responses become protobuf for clients that prefer it.
pub async fn negotiate(request: Request, next: Next) -> Response {
    let wants_protobuf = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_protobuf);
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if !wants_protobuf || !is_json || response.body().size_hint().exact().is_none() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        // A complete body cannot fail to read; if it did, there is nothing left to send.
        return Response::from_parts(parts, Body::empty());
    };
    let json = collected.to_bytes();
    let encoded = serde_json::from_slice(&json)
        .ok()
        .and_then(|value| protobuf::encode(&value).ok());
    match encoded {
        Some(bytes) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(protobuf::MEDIA_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(bytes))
        }
        None => Response::from_parts(parts, Body::from(json)),
    }
}

#[cfg(test)]
mod tests {
    use super::prefers_protobuf;

    #[test]
    fn the_first_acceptable_type_wins() {
        assert!(prefers_protobuf(
            "application/vnd.kubernetes.protobuf, application/json"
        ));
        assert!(prefers_protobuf(
            "application/vnd.kubernetes.protobuf;q=1, */*;q=0.5"
        ));
        assert!(!prefers_protobuf(
            "application/json, application/vnd.kubernetes.protobuf"
        ));
        assert!(!prefers_protobuf("*/*"));
        assert!(!prefers_protobuf(""));
        assert!(!prefers_protobuf("application/json"));
        // Unknown types are skipped; quality ranks before order.
        assert!(prefers_protobuf(
            "application/cbor, application/vnd.kubernetes.protobuf"
        ));
        assert!(prefers_protobuf(
            "application/json;q=0.9, application/vnd.kubernetes.protobuf"
        ));
        // Tables are JSON.
        assert!(!prefers_protobuf(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json"
        ));
    }
}
