//! Writes compiled NetworkPolicy ([`crate::policy::plan::Plan`]) into the policy maps: each
//! local pod is an endpoint, named in the maps by its host-side veth's ifindex, and each policy
//! rule gets a small number for the verdict events.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use apiary_ebpf_common::{
    POLICY_EGRESS, POLICY_EGRESS_ENFORCED, POLICY_INGRESS, POLICY_INGRESS_ENFORCED,
};

use crate::{
    dataplane::{AllowEntry, PolicyMaps},
    policy::{
        Allow, CidrKey, PodRef, PolicyKey, RuleRef,
        plan::{Plan, Step},
    },
};

/// Numbers for policy rules, as the verdict events carry them (0 is the node's own allowance).
#[derive(Debug, Default)]
pub struct RuleTable {
    ids: BTreeMap<RuleRef, u32>,
    rules: Vec<RuleRef>,
}

impl RuleTable {
    /// The rule's number, handed out on first use.
    pub fn id_of(&mut self, rule: &RuleRef) -> u32 {
        if let Some(id) = self.ids.get(rule) {
            return *id;
        }
        self.rules.push(rule.clone());
        let id = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        self.ids.insert(rule.clone(), id);
        id
    }

    /// Every rule with its number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &RuleRef)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, rule)| (u32::try_from(i + 1).unwrap_or(u32::MAX), rule))
    }

    /// The rule behind a number of a verdict event.
    pub fn rule(&self, id: u32) -> Option<&RuleRef> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.rules.get(index)
    }
}

/// The allow entry of `key` at `endpoint`.
pub fn entry(endpoint: u32, key: &PolicyKey) -> AllowEntry {
    AllowEntry {
        endpoint,
        identity: key.identity.0,
        direction: key.direction as u8,
        protocol: key.protocol,
        port: key.port,
        port_prefix_len: key.port_prefix_len,
    }
}

/// Applies `plan`; `endpoint_of` names each pod's endpoint (`None`: its veth is not there yet —
/// it is skipped and planned again later). Returns the pods it could not write.
pub fn apply(
    maps: &mut PolicyMaps,
    plan: &Plan,
    rules: &mut RuleTable,
    endpoint_of: impl Fn(&PodRef) -> Option<u32>,
) -> anyhow::Result<Vec<PodRef>> {
    let mut skipped = Vec::new();
    for (pod, endpoint_plan) in &plan.endpoints {
        let Some(endpoint) = endpoint_of(pod) else {
            skipped.push(pod.clone());
            continue;
        };
        for step in endpoint_plan.steps() {
            write(maps, endpoint, &step, rules)?;
        }
    }
    Ok(skipped)
}

fn write(
    maps: &mut PolicyMaps,
    endpoint: u32,
    step: &Step<'_>,
    rules: &mut RuleTable,
) -> anyhow::Result<()> {
    match step {
        Step::UpsertEntry(key, allow) => {
            let rule_id = match allow {
                Allow::Host => 0,
                Allow::Rule(rule) => rules.id_of(rule),
            };
            maps.allow(&entry(endpoint, key), rule_id)?;
        }
        Step::DeleteEntry(key) => {
            maps.revoke(&entry(endpoint, key))?;
        }
        Step::UpsertCidr(key, class) => {
            if let Some((addr, len)) = ipv4_prefix(key) {
                maps.set_cidr_class(endpoint, key.direction as u8, addr, len, class.0)?;
            }
        }
        Step::DeleteCidr(key) => {
            if let Some((addr, len)) = ipv4_prefix(key) {
                maps.remove_cidr_class(endpoint, key.direction as u8, addr, len)?;
            }
        }
        Step::SetEnforcement(enforcement) => {
            let mut flags = 0;
            if enforcement.ingress {
                flags |= POLICY_INGRESS_ENFORCED;
            }
            if enforcement.egress {
                flags |= POLICY_EGRESS_ENFORCED;
            }
            maps.set_enforcement(endpoint, flags)?;
        }
        Step::RemoveEndpoint => {
            maps.remove_endpoint(endpoint)?;
        }
    }
    Ok(())
}

/// The data plane is IPv4: IPv6 prefixes of `ipBlock`s have nothing to match.
fn ipv4_prefix(key: &CidrKey) -> Option<(std::net::Ipv4Addr, u8)> {
    match key.prefix.addr() {
        IpAddr::V4(addr) => Some((addr, key.prefix.prefix_len())),
        IpAddr::V6(_) => None,
    }
}

/// Forgets the tracked flows the maps no longer allow, so that a connection a policy change
/// revoked is judged again at its next packet (and dropped), while allowed ones go on
/// untouched. Only flows for which `recheck(endpoint, peer)` says so are judged; `pod_ips`
/// gives each local endpoint's pod address, which tells a flow's direction (the pod sent its
/// first packet: egress). Returns how many were forgotten.
pub fn expire_flows(
    maps: &mut PolicyMaps,
    pod_ips: &BTreeMap<u32, Ipv4Addr>,
    recheck: impl Fn(u32, Ipv4Addr) -> bool,
) -> anyhow::Result<usize> {
    let mut forgotten = 0;
    for flow in maps.tracked_flows()? {
        let Some(&pod_ip) = pod_ips.get(&flow.endpoint) else {
            continue;
        };
        let (source, destination) = (Ipv4Addr::from(flow.saddr), Ipv4Addr::from(flow.daddr));
        let (direction, peer) = if source == pod_ip {
            (POLICY_EGRESS, destination)
        } else {
            (POLICY_INGRESS, source)
        };
        if !recheck(flow.endpoint, peer) {
            continue;
        }
        let port = u16::from_be(flow.dport_be);
        let verdict = maps.trace(flow.endpoint, direction, peer, flow.protocol, port)?;
        if !verdict.allowed() && maps.forget_flow(&flow)? {
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Direction, Identity};

    #[test]
    fn rules_get_stable_numbers_from_one() {
        let mut table = RuleTable::default();
        let rule = |n| RuleRef {
            namespace: "x".into(),
            policy: "p".into(),
            direction: Direction::Ingress,
            rule: n,
        };
        assert_eq!(table.id_of(&rule(0)), 1);
        assert_eq!(table.id_of(&rule(1)), 2);
        assert_eq!(table.id_of(&rule(0)), 1);
        assert_eq!(table.rule(2), Some(&rule(1)));
        assert_eq!(table.rule(0), None, "0 is the node's allowance");
    }

    #[test]
    fn keys_become_entries_of_the_endpoint() {
        let key = PolicyKey::new(Identity(300), Direction::Egress, 6, 8080, 16);
        let e = entry(42, &key);
        assert_eq!(
            (
                e.endpoint,
                e.identity,
                e.direction,
                e.protocol,
                e.port,
                e.port_prefix_len
            ),
            (42, 300, 1, 6, 8080, 16)
        );
    }
}
