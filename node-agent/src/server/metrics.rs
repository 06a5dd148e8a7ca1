//! `GET /metrics`: the node's data-plane counters in Prometheus' text format. Today: packets
//! the data plane dropped (`apiary_dataplane_drops_total`: NetworkPolicy's and spoofed sources),
//! by pod, direction and reason, and NetworkPolicy's alone (`apiary_policy_drops_total`).

use std::{fmt::Write as _, sync::Arc};

use apiary_ebpf_common::{
    DROP_FLOW_TABLE_FULL, DROP_POLICY_DENIED, DROP_SPOOFED, DROP_UNPARSABLE, POLICY_INGRESS,
    PolicyDropKey,
};
use axum::{
    extract::State,
    http::header,
    response::{IntoResponse as _, Response},
};

use super::{StreamError, flows::FlowNames, trace::PolicyTracer};

/// The exposition of `drops`, pods named by `names` (endpoints no longer known by their id):
/// every drop in `apiary_dataplane_drops_total`, and NetworkPolicy's own also in
/// `apiary_policy_drops_total`.
pub fn render(drops: &[(PolicyDropKey, u64)], names: &FlowNames) -> String {
    let mut dataplane = String::from(
        "# HELP apiary_dataplane_drops_total Packets the data plane dropped, by pod, direction and reason.\n\
         # TYPE apiary_dataplane_drops_total counter\n",
    );
    let mut policy = String::from(
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
            DROP_SPOOFED => "spoofed".to_owned(),
            DROP_FLOW_TABLE_FULL => "flow_table_full".to_owned(),
            other => format!("reason_{other}"),
        };
        let labels = format!(
            "pod=\"{}\",direction=\"{direction}\",reason=\"{reason}\"",
            pod.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let _ = writeln!(
            dataplane,
            "apiary_dataplane_drops_total{{{labels}}} {packets}"
        );
        if key.reason != DROP_SPOOFED {
            let _ = writeln!(policy, "apiary_policy_drops_total{{{labels}}} {packets}");
        }
    }
    dataplane + &policy
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
                (key(7, POLICY_EGRESS, DROP_SPOOFED), 3),
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
        // Spoofing is no policy's verdict: only the data plane's family counts it.
        assert!(text.contains("# TYPE apiary_dataplane_drops_total counter\n"));
        assert!(text.contains(
            "apiary_dataplane_drops_total{pod=\"x/b\",direction=\"egress\",reason=\"spoofed\"} 3\n"
        ));
        assert!(text.contains(
            "apiary_dataplane_drops_total{pod=\"x/b\",direction=\"ingress\",reason=\"policy_denied\"} 12\n"
        ));
        assert!(!text.contains("apiary_policy_drops_total{pod=\"x/b\",direction=\"egress\""));
    }
}
