//! `networking.k8s.io/v1`: NetworkPolicy, and the CIDR arithmetic its `ipBlock`s need.

use std::{net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    intstr::IntOrString,
    meta::{NoStatus, Object},
    selector::LabelSelector,
};

/// Which traffic the selected pods accept and send; pods selected by no policy are open.
pub type NetworkPolicy = Object<NetworkPolicySpec, NoStatus>;

/// The rules of a [`NetworkPolicy`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods (in the policy's namespace) it applies to; empty selects all.
    pub pod_selector: LabelSelector,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
    /// `Ingress` and/or `Egress`; defaults to `Ingress`, plus `Egress` if there are egress rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
}

impl NetworkPolicySpec {
    /// The effective policy types: `policyTypes` if set, else Kubernetes' default.
    pub fn effective_policy_types(&self) -> Vec<&str> {
        if !self.policy_types.is_empty() {
            return self.policy_types.iter().map(String::as_str).collect();
        }
        let mut types = vec!["Ingress"];
        if !self.egress.is_empty() {
            types.push("Egress");
        }
        types
    }
}

/// Traffic allowed in: from any of `from` (everyone if empty) to any of `ports` (all if empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkPolicyIngressRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
}

/// Traffic allowed out: to any of `to` (everyone if empty) on any of `ports` (all if empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkPolicyEgressRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
}

/// A port (or range `port`..=`endPort`) and protocol (default `TCP`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number or a named container port; unset means all ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

/// A peer: pods (by pod and/or namespace selector) or an IP block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// A CIDR minus some sub-CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

impl IpBlock {
    /// Whether `ip` is in `cidr` and in none of `except`. Unparsable CIDRs contain nothing.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let inside = |c: &str| c.parse::<Cidr>().is_ok_and(|c| c.contains(ip));
        inside(&self.cidr) && !self.except.iter().any(|e| inside(e))
    }
}

/// An IPv4 or IPv6 prefix such as `10.0.0.0/8`; host bits may be set, as Kubernetes allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A string that is not `address/prefix`. Not retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address: {0}")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix_len: u8 = len.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(err());
        }
        Ok(Self { addr, prefix_len })
    }
}

impl Cidr {
    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Self::bits(self.addr);
        let host_bits = u32::from(width - self.prefix_len);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all.checked_shl(host_bits).unwrap_or(0) & all
    }

    /// Whether `ip` (of the same family) is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ((net, w1), (addr, w2)) = (Self::bits(self.addr), Self::bits(ip));
        w1 == w2 && net & self.mask() == addr & self.mask()
    }

    /// Whether `other` is inside this prefix and strictly smaller.
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        self.contains(other.addr) && other.prefix_len > self.prefix_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            "10.0.0.1/32"
                .parse::<Cidr>()
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
        let v6: Cidr = "2001:db8::/64".parse().unwrap();
        assert!(v6.contains("2001:db8::42".parse().unwrap()));
        assert!(c.strictly_contains(&"10.1.2.0/24".parse().unwrap()));
        assert!(!c.strictly_contains(&"10.1.0.0/16".parse().unwrap()));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "::/129",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_blocks_subtract_exceptions() {
        let block = IpBlock {
            cidr: "172.17.0.0/16".into(),
            except: vec!["172.17.1.0/24".into()],
        };
        assert!(block.contains("172.17.0.9".parse().unwrap()));
        assert!(!block.contains("172.17.1.9".parse().unwrap()));
    }

    #[test]
    fn default_policy_types() {
        let mut spec = NetworkPolicySpec::default();
        assert_eq!(spec.effective_policy_types(), ["Ingress"]);
        spec.egress.push(NetworkPolicyEgressRule::default());
        assert_eq!(spec.effective_policy_types(), ["Ingress", "Egress"]);
        spec.policy_types = vec!["Egress".into()];
        assert_eq!(spec.effective_policy_types(), ["Egress"]);
    }
}
