//! A rule's `ports` as the data plane matches them: (protocol, port, prefix length) triples, a
//! port range split into the fewest aligned prefixes (as Cilium splits `endPort` ranges), and
//! named ports resolved against a destination pod's container ports.

use apiary_api::{intstr::IntOrString, networking_v1::NetworkPolicyPort};
use apiary_ebpf_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use super::{PROTO_ANY, identity::NamedPort};

/// What one entry matches: protocol ([`PROTO_ANY`] for all), port, and how many of the port's
/// top bits must equal (0 = every port, 16 = exactly `port`).
pub type PortMatch = (u8, u16, u8);

/// The mask keeping the top `len` bits of a port.
pub fn prefix_mask(len: u8) -> u16 {
    match len {
        0 => 0,
        len => u16::MAX << (16 - u32::from(len.min(16))),
    }
}

/// The fewest (port, prefix length) pairs whose union is exactly `lo..=hi`, lowest first; none
/// if `hi < lo`. `0..=65535` is one pair of length 0, `80..=81` is `(80, 15)`, `1000..=2000`
/// takes eight.
pub fn range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest block aligned at `lo` that ends inside the range.
        let mut bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << bits) - 1 > hi {
            bits -= 1;
        }
        // In range: `lo <= hi <= 65535` and `bits <= 16`.
        out.push((lo as u16, (16 - bits) as u8));
        lo += 1 << bits;
    }
    out
}

/// The protocol number of a `protocol` field: TCP when unset; `None` for anything unknown.
pub fn protocol_number(protocol: Option<&str>) -> Option<u8> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// One entry of a rule's `ports`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// The rule has no `ports`: every protocol and port.
    All,
    /// Numbers `lo..=hi` of `protocol` (`lo..=lo` without `endPort`; `0..=65535` without `port`).
    Range { protocol: u8, lo: u16, hi: u16 },
    /// A named container port of the destination pod, with this protocol.
    Named { protocol: u8, name: String },
    /// Something that matches nothing: an unknown protocol, a port out of range, `endPort`
    /// below `port`. Validation rejects these; a stored one must not widen the rule.
    Nothing,
}

impl PortSpec {
    /// A `NetworkPolicyPort`, parsed.
    pub fn parse(port: &NetworkPolicyPort) -> Self {
        let Some(protocol) = protocol_number(port.protocol.as_deref()) else {
            return Self::Nothing;
        };
        match &port.port {
            None => Self::Range {
                protocol,
                lo: 0,
                hi: u16::MAX,
            },
            Some(IntOrString::String(name)) => Self::Named {
                protocol,
                name: name.clone(),
            },
            Some(IntOrString::Int(n)) => {
                let end = port.end_port.unwrap_or(*n);
                match (u16::try_from(*n), u16::try_from(end)) {
                    (Ok(lo), Ok(hi)) if lo >= 1 && hi >= lo => Self::Range { protocol, lo, hi },
                    _ => Self::Nothing,
                }
            }
        }
    }

    /// A rule's `ports`: `[All]` when empty.
    pub fn parse_all(ports: &[NetworkPolicyPort]) -> Vec<Self> {
        if ports.is_empty() {
            vec![Self::All]
        } else {
            ports.iter().map(Self::parse).collect()
        }
    }

    /// Whether it needs the destination pod's container ports.
    pub fn is_named(&self) -> bool {
        matches!(self, Self::Named { .. })
    }

    /// What it matches for a destination with `ports` as its container ports (`None` when the
    /// destination is no known pod: a named port then matches nothing).
    pub fn resolve(&self, ports: Option<&[NamedPort]>) -> Vec<PortMatch> {
        match self {
            Self::All => vec![(PROTO_ANY, 0, 0)],
            Self::Range { protocol, lo, hi } => range_prefixes(*lo, *hi)
                .into_iter()
                .map(|(port, len)| (*protocol, port, len))
                .collect(),
            Self::Named { protocol, name } => ports
                .unwrap_or_default()
                .iter()
                .filter(|p| p.name == *name && p.protocol == *protocol)
                .map(|p| (*protocol, p.port, 16))
                .collect(),
            Self::Nothing => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every port the pairs cover, by brute force over the prefix semantics.
    fn covered(pairs: &[(u16, u8)]) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|p| {
                pairs
                    .iter()
                    .any(|&(port, len)| p & prefix_mask(len) == port)
            })
            .collect()
    }

    #[test]
    fn port_ranges_split_into_the_fewest_aligned_prefixes() {
        assert_eq!(range_prefixes(80, 80), [(80, 16)]);
        assert_eq!(range_prefixes(80, 81), [(80, 15)]);
        assert_eq!(range_prefixes(81, 82), [(81, 16), (82, 16)]);
        assert_eq!(range_prefixes(0, 65535), [(0, 0)]);
        assert_eq!(range_prefixes(1, 65535).len(), 16);
        assert_eq!(range_prefixes(65535, 65535), [(65535, 16)]);
        assert_eq!(range_prefixes(32768, 65535), [(32768, 1)]);
        assert_eq!(
            range_prefixes(1000, 2000),
            [
                (1000, 13),
                (1008, 12),
                (1024, 7),
                (1536, 8),
                (1792, 9),
                (1920, 10),
                (1984, 12),
                (2000, 16)
            ]
        );
        assert!(range_prefixes(2, 1).is_empty());
        for (lo, hi) in [
            (80, 81),
            (1000, 2000),
            (0, 65535),
            (1, 65534),
            (443, 443),
            (30000, 32767),
            (7, 9),
        ] {
            let pairs = range_prefixes(lo, hi);
            assert_eq!(
                covered(&pairs),
                (lo..=hi).collect::<Vec<_>>(),
                "{lo}..={hi}"
            );
            for &(port, len) in &pairs {
                assert_eq!(port & !prefix_mask(len), 0, "{port}/{len} is aligned");
            }
        }
    }

    #[test]
    fn prefix_masks_keep_the_top_bits() {
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(1), 0x8000);
        assert_eq!(prefix_mask(15), 0xfffe);
        assert_eq!(prefix_mask(16), 0xffff);
    }

    #[test]
    fn ports_parse_with_tcp_by_default_and_bad_ones_match_nothing() {
        let port = |protocol: Option<&str>, port: Option<IntOrString>, end: Option<i32>| {
            PortSpec::parse(&NetworkPolicyPort {
                protocol: protocol.map(str::to_owned),
                port,
                end_port: end,
            })
        };
        assert_eq!(
            port(None, Some(IntOrString::Int(80)), None),
            PortSpec::Range {
                protocol: PROTO_TCP,
                lo: 80,
                hi: 80
            }
        );
        assert_eq!(
            port(Some("UDP"), None, None),
            PortSpec::Range {
                protocol: PROTO_UDP,
                lo: 0,
                hi: 65535
            }
        );
        assert_eq!(
            port(Some("SCTP"), Some(IntOrString::Int(1000)), Some(2000)),
            PortSpec::Range {
                protocol: PROTO_SCTP,
                lo: 1000,
                hi: 2000
            }
        );
        assert_eq!(
            port(Some("ICMP"), Some(IntOrString::Int(80)), None),
            PortSpec::Nothing
        );
        assert_eq!(
            port(None, Some(IntOrString::Int(81)), Some(80)),
            PortSpec::Nothing
        );
        assert_eq!(
            port(None, Some(IntOrString::Int(0)), None),
            PortSpec::Nothing
        );
        assert_eq!(
            port(None, Some(IntOrString::Int(70000)), None),
            PortSpec::Nothing
        );
        assert_eq!(PortSpec::parse_all(&[]), [PortSpec::All]);
        assert_eq!(PortSpec::All.resolve(None), [(PROTO_ANY, 0, 0)]);
        assert!(PortSpec::Nothing.resolve(None).is_empty());
    }

    #[test]
    fn named_ports_resolve_by_name_and_protocol() {
        let ports = [
            NamedPort {
                name: "http".into(),
                protocol: PROTO_TCP,
                port: 8080,
            },
            NamedPort {
                name: "dns".into(),
                protocol: PROTO_UDP,
                port: 53,
            },
        ];
        let named = |protocol, name: &str| PortSpec::Named {
            protocol,
            name: name.into(),
        };
        assert_eq!(
            named(PROTO_TCP, "http").resolve(Some(&ports)),
            [(PROTO_TCP, 8080, 16)]
        );
        assert_eq!(
            named(PROTO_UDP, "dns").resolve(Some(&ports)),
            [(PROTO_UDP, 53, 16)]
        );
        assert!(named(PROTO_TCP, "dns").resolve(Some(&ports)).is_empty());
        assert!(named(PROTO_TCP, "nope").resolve(Some(&ports)).is_empty());
        assert!(named(PROTO_TCP, "http").resolve(None).is_empty());
        assert!(named(PROTO_TCP, "http").is_named());
    }
}
