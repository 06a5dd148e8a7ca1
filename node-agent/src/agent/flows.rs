//! Reads the programs' policy verdicts (`POLICY_EVENTS`) into the agent's [`FlowLog`], naming
//! pods and rules as the policy enforcer knows them, for `apiary net observe`.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use apiary_ebpf_common::{
    POLICY_INGRESS, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyVerdict, VERDICT_ALLOWED,
    VERDICT_FLOW_TABLE_FULL, VERDICT_SPOOFED,
};

use crate::{
    dataplane::PolicyEvents,
    server::{FlowLog, FlowPeer, FlowRecord},
};

/// How often the ring buffer is read.
const POLL: Duration = Duration::from_millis(100);

pub use crate::server::flows::{FlowNames, SharedFlowNames};

/// Reads verdicts until the agent stops.
pub async fn follow(node: String, pin_dir: PathBuf, names: SharedFlowNames, log: FlowLog) {
    let mut events = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if events.is_none() {
            match PolicyEvents::open(&pin_dir) {
                Ok(opened) => events = Some(opened),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "opening the verdict ring buffer");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
        }
        let Some(events) = events.as_mut() else {
            continue;
        };
        let verdicts = events.drain();
        if verdicts.is_empty() {
            continue;
        }
        let names = names.read().expect("flow names lock");
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for verdict in verdicts {
            log.push(record(&node, &time, &verdict, &names));
        }
    }
}

/// The record of `verdict`, with what `names` knows.
pub fn record(node: &str, time: &str, verdict: &PolicyVerdict, names: &FlowNames) -> FlowRecord {
    let peer = |addr: [u8; 4], port_be: u16| {
        let address = Ipv4Addr::from(addr);
        FlowPeer {
            address,
            port: u16::from_be(port_be),
            pod: names.pods.get(&address).cloned(),
        }
    };
    let allowed = verdict.verdict == VERDICT_ALLOWED;
    let spoofed = verdict.verdict == VERDICT_SPOOFED;
    let mut source = peer(verdict.saddr, verdict.sport_be);
    if spoofed {
        // The address is a claim: naming the pod that owns it would blame the victim.
        source.pod = None;
    }
    FlowRecord {
        time: time.to_owned(),
        node: node.to_owned(),
        verdict: match verdict.verdict {
            VERDICT_ALLOWED => "allowed",
            VERDICT_SPOOFED => "spoofed",
            VERDICT_FLOW_TABLE_FULL => "flow-table-full",
            _ => "denied",
        }
        .to_owned(),
        direction: if verdict.direction == POLICY_INGRESS {
            "ingress"
        } else {
            "egress"
        }
        .to_owned(),
        endpoint: names.endpoints.get(&verdict.endpoint).cloned(),
        protocol: match verdict.protocol {
            PROTO_TCP => "TCP".to_owned(),
            PROTO_UDP => "UDP".to_owned(),
            PROTO_SCTP => "SCTP".to_owned(),
            1 => "ICMP".to_owned(),
            other => other.to_string(),
        },
        source,
        destination: peer(verdict.daddr, verdict.dport_be),
        peer_identity: verdict.peer_identity,
        policy: match (allowed, verdict.rule_id) {
            (false, _) => None,
            (true, 0) => Some("node".to_owned()),
            (true, id) => names
                .rules
                .get(&id)
                .cloned()
                .or_else(|| Some(format!("rule #{id}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_ebpf_common::{POLICY_EGRESS, VERDICT_DENIED};

    #[test]
    fn verdicts_are_named_as_the_enforcer_knows_them() {
        let mut names = FlowNames::default();
        names
            .pods
            .insert(Ipv4Addr::new(10, 0, 0, 1), "x/a".to_owned());
        names.endpoints.insert(7, "x/a".to_owned());
        names.rules.insert(3, "x/p egress[0]".to_owned());
        let mut verdict = PolicyVerdict {
            saddr: [10, 0, 0, 1],
            daddr: [192, 0, 2, 1],
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            protocol: PROTO_TCP,
            direction: POLICY_EGRESS,
            verdict: VERDICT_ALLOWED,
            pad: 0,
            endpoint: 7,
            peer_identity: 2,
            rule_id: 3,
        };
        let r = record("n1", "t", &verdict, &names);
        assert_eq!(
            (
                r.verdict.as_str(),
                r.direction.as_str(),
                r.endpoint.as_deref(),
                r.source.pod.as_deref(),
                r.destination.pod.as_deref(),
                r.destination.port,
                r.policy.as_deref()
            ),
            (
                "allowed",
                "egress",
                Some("x/a"),
                Some("x/a"),
                None,
                80,
                Some("x/p egress[0]")
            )
        );
        verdict.verdict = VERDICT_DENIED;
        assert_eq!(record("n1", "t", &verdict, &names).policy, None);
    }

    #[test]
    fn a_spoofed_packet_names_its_sender_not_the_address_it_claimed() {
        let mut names = FlowNames::default();
        names
            .pods
            .insert(Ipv4Addr::new(10, 0, 0, 1), "x/victim".to_owned());
        names.endpoints.insert(9, "x/liar".to_owned());
        let verdict = PolicyVerdict {
            saddr: [10, 0, 0, 1],
            daddr: [10, 0, 0, 2],
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            protocol: PROTO_TCP,
            direction: POLICY_EGRESS,
            verdict: VERDICT_SPOOFED,
            pad: 0,
            endpoint: 9,
            peer_identity: 2,
            rule_id: 0,
        };
        let r = record("n1", "t", &verdict, &names);
        assert_eq!(
            (
                r.verdict.as_str(),
                r.endpoint.as_deref(),
                r.source.pod.as_deref(),
                r.policy
            ),
            ("spoofed", Some("x/liar"), None, None)
        );
    }
}
