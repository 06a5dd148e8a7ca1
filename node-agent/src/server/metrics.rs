//! `GET /metrics`: the node's data-plane counters in Prometheus' text format. Today: packets
//! NetworkPolicy dropped, by pod, direction and reason (`apiary_policy_drops_total`).

use std::{fmt::Write as _, sync::Arc};

use apiary_ebpf_common::{DROP_POLICY_DENIED, DROP_UNPARSABLE, POLICY_INGRESS, PolicyDropKey};
use axum::{
    extract::State,
    http::header,
    response::{IntoResponse as _, Response},
};

use super::{StreamError, flows::FlowNames, trace::PolicyTracer};

/// The exposition of `drops`, pods named by `names` (endpoints no longer known by their id).
pub fn render(drops: &[(PolicyDropKey, u64)], names: &FlowNames) -> String {
    let mut text = String::from(
        "# HELP apiary_policy_drops_total Packets dropped by NetworkPolicy, by pod, direction and reason.\n\
         # TYPE apiary_policy_drops_total counter\n",
    );
    for (key, packets) in drops {
        let pod = names
            .endpoints
            .get(&key.endpoint)
            .cloned()
            .unwrap_or_else(|| format!("endpoint:{}", key.endpoint));
        let direction = if key.direction == POLICY_INGRESS {
            "ingress"
        } else {
            "egress"
        };
        let reason = match key.reason {
            DROP_POLICY_DENIED => "policy_denied".to_owned(),
            DROP_UNPARSABLE => "unparsable".to_owned(),
            other => format!("reason_{other}"),
        };
        let _ = writeln!(
            text,
            "apiary_policy_drops_total{{pod=\"{}\",direction=\"{direction}\",reason=\"{reason}\"}} {packets}",
            pod.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    text
}

pub(super) async fn handle(State(tracer): State<Option<Arc<PolicyTracer>>>) -> Response {
    let Some(tracer) = tracer else {
        return (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(&[], &FlowNames::default()),
        )
            .into_response();
    };
    let pin_dir = tracer.pin_dir.clone();
    let drops = tokio::task::spawn_blocking(move || crate::dataplane::policy_drops(&pin_dir)).await;
    let drops = match drops {
        Ok(Ok(drops)) => drops,
        Ok(Err(e)) => {
            return StreamError::Internal(anyhow::Error::new(e).context("reading POLICY_DROPS"))
                .into_response();
        }
        Err(e) => return StreamError::Internal(anyhow::anyhow!("{e}")).into_response(),
    };
    let text = render(&drops, &tracer.names.read().expect("flow names lock"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_ebpf_common::POLICY_EGRESS;

    #[test]
    fn counters_are_labelled_with_pod_direction_and_reason() {
        let mut names = FlowNames::default();
        names.endpoints.insert(7, "x/b".to_owned());
        let key = |endpoint, direction, reason| PolicyDropKey {
            endpoint,
            direction,
            reason,
            pad: [0; 2],
        };
        let text = render(
            &[
                (key(7, POLICY_INGRESS, DROP_POLICY_DENIED), 12),
                (key(9, POLICY_EGRESS, DROP_UNPARSABLE), 1),
            ],
            &names,
        );
        assert!(text.contains("# TYPE apiary_policy_drops_total counter\n"));
        assert!(text.contains(
            "apiary_policy_drops_total{pod=\"x/b\",direction=\"ingress\",reason=\"policy_denied\"} 12\n"
        ));
        assert!(text.contains(
            "apiary_policy_drops_total{pod=\"endpoint:9\",direction=\"egress\",reason=\"unparsable\"} 1\n"
        ));
    }
}
