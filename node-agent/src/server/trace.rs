//! `GET /apiary/v1/policy/trace?pod=NS/NAME&direction=ingress|egress&peer=IP&protocol=P&port=N`:
//! how this node's programs would judge a new flow of one of its pods, read from the compiled
//! policy maps, with the rule that allows it — for `apiary net policy trace`.

use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

use apiary_ebpf_common::{POLICY_EGRESS, POLICY_INGRESS, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use axum::{
    Json,
    extract::{Query, State},
    response::{IntoResponse as _, Response},
};
use serde::{Deserialize, Serialize};

use super::{StreamError, flows::SharedFlowNames};
use crate::dataplane::PolicyMaps;

/// Where the tracer reads: the pinned maps, and the names the enforcer keeps.
#[derive(Clone, Debug)]
pub struct PolicyTracer {
    pub pin_dir: PathBuf,
    pub names: SharedFlowNames,
}

#[derive(Debug, Deserialize)]
pub(super) struct TraceQuery {
    pod: String,
    direction: String,
    peer: Ipv4Addr,
    #[serde(default = "tcp")]
    protocol: String,
    port: u16,
}

fn tcp() -> String {
    "TCP".to_owned()
}

/// One side's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceResult {
    pub pod: String,
    pub direction: String,
    /// Whether some policy selects the pod for this direction.
    pub enforced: bool,
    pub allowed: bool,
    pub peer_identity: u32,
    /// The identity the allowing entry is for: the peer's, `0` (any peer) or an `ipBlock` class.
    pub matched_identity: Option<u32>,
    /// The allowing rule (`namespace/policy direction[i]`, or `node`).
    pub rule: Option<String>,
}

fn protocol_number(name: &str) -> Option<u8> {
    match name.to_ascii_uppercase().as_str() {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        other => other.parse().ok(),
    }
}

pub(super) async fn handle(
    State(tracer): State<Option<Arc<PolicyTracer>>>,
    Query(query): Query<TraceQuery>,
) -> Response {
    let Some(tracer) = tracer else {
        return StreamError::Internal(anyhow::anyhow!("this agent enforces no policy"))
            .into_response();
    };
    let direction = match query.direction.as_str() {
        "ingress" => POLICY_INGRESS,
        "egress" => POLICY_EGRESS,
        other => {
            return StreamError::BadRequest(format!(
                "direction: {other:?} is neither ingress nor egress"
            ))
            .into_response();
        }
    };
    let Some(protocol) = protocol_number(&query.protocol) else {
        return StreamError::BadRequest(format!(
            "protocol: {:?} is not TCP, UDP, SCTP or a number",
            query.protocol
        ))
        .into_response();
    };
    let endpoint = {
        let names = tracer.names.read().expect("flow names lock");
        names
            .endpoints
            .iter()
            .find(|(_, pod)| **pod == query.pod)
            .map(|(id, _)| *id)
    };
    let Some(endpoint) = endpoint else {
        let (namespace, pod) = query.pod.split_once('/').unwrap_or(("", &query.pod));
        return StreamError::PodNotFound {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        }
        .into_response();
    };
    let traced = tokio::task::spawn_blocking({
        let tracer = Arc::clone(&tracer);
        move || {
            PolicyMaps::open(&tracer.pin_dir)?
                .trace(endpoint, direction, query.peer, protocol, query.port)
        }
    })
    .await;
    let verdict = match traced {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(e)) => {
            return StreamError::Internal(anyhow::Error::new(e).context("reading the policy maps"))
                .into_response();
        }
        Err(e) => return StreamError::Internal(anyhow::anyhow!("{e}")).into_response(),
    };
    let rule = verdict.rule_id.map(|id| {
        if id == 0 {
            "node".to_owned()
        } else {
            let names = tracer.names.read().expect("flow names lock");
            names
                .rules
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("rule #{id}"))
        }
    });
    Json(TraceResult {
        pod: query.pod,
        direction: query.direction,
        enforced: verdict.enforced,
        allowed: verdict.allowed(),
        peer_identity: verdict.peer_identity,
        matched_identity: verdict.matched_identity,
        rule,
    })
    .into_response()
}
