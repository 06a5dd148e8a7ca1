//! Typed access to the NetworkPolicy maps: allow entries (`POLICY`), `ipBlock` classes
//! (`POLICY_CIDR`), per-endpoint enforcement (`POLICY_ENFORCED`), the address → identity map
//! (`IPCACHE`), the flows let through (`POLICY_FLOWS`, with each endpoint's count in
//! `POLICY_FLOW_USE`) and the verdict ring buffer (`POLICY_EVENTS`).
//!
//! Writers follow the policy plan's order (allow entries before enforcement, enforcement before
//! removals), so that nothing both the old and the new policy allow is ever dropped mid-update.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use apiary_ebpf_common::{
    IPCACHE, POLICY, POLICY_CIDR, POLICY_CIDR_PREFIX_BASE, POLICY_DROPS, POLICY_ENFORCED,
    POLICY_EVENTS, POLICY_FLOW_USE, POLICY_FLOWS, POLICY_FLOWS_MAX_ENTRIES,
    POLICY_PREFIX_ANY_PROTOCOL, POLICY_PREFIX_PROTOCOL, PolicyCidrData, PolicyData, PolicyDropKey,
    PolicyFlow, PolicyFlowKey, PolicyValue, PolicyVerdict, flow_idle_seconds,
};
use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuHashMap, RingBuf, lpm_trie::Key};

use super::{Error, Result, endpoints::is_not_found};

/// One allow entry: which peers (`identity`, 0 = any) may reach or be reached by `endpoint` in
/// `direction`, for `protocol` (0 = any; then no port) and the ports sharing the first
/// `port_prefix_len` bits of `port` (0 = every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    pub port: u16,
    pub port_prefix_len: u8,
}

impl AllowEntry {
    fn key(&self) -> Key<PolicyData> {
        let (prefix, port) = if self.protocol == 0 {
            (POLICY_PREFIX_ANY_PROTOCOL, 0)
        } else {
            let len = u32::from(self.port_prefix_len.min(16));
            // Bits below the prefix are zero in a stored key.
            let mask = if len == 0 { 0 } else { u16::MAX << (16 - len) };
            (POLICY_PREFIX_PROTOCOL + len, self.port & mask)
        };
        Key::new(
            prefix,
            PolicyData {
                endpoint_be: self.endpoint.to_be_bytes(),
                identity_be: self.identity.to_be_bytes(),
                direction: self.direction,
                protocol: self.protocol,
                port_be: port.to_be_bytes(),
            },
        )
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// The policy maps of a node, opened through their pins.
pub struct PolicyMaps {
    entries: LpmTrie<MapData, PolicyData, PolicyValue>,
    cidrs: LpmTrie<MapData, PolicyCidrData, u32>,
    enforced: HashMap<MapData, u32, u32>,
    ipcache: HashMap<MapData, [u8; 4], u32>,
    flows: HashMap<MapData, PolicyFlowKey, PolicyFlow>,
    flow_use: HashMap<MapData, u32, u32>,
}

/// What one [`PolicyMaps::sweep_flows`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSweep {
    /// Flows still remembered.
    pub kept: usize,
    /// Flows forgotten: idle past their lifetime, or of an endpoint that no longer enforces.
    pub removed: usize,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMaps").finish_non_exhaustive()
    }
}

impl PolicyMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let lpm = |name: &'static str| -> Result<MapData> {
            MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))
        };
        Ok(Self {
            entries: LpmTrie::try_from(Map::LpmTrie(lpm(POLICY)?)).map_err(map_err(POLICY))?,
            cidrs: LpmTrie::try_from(Map::LpmTrie(lpm(POLICY_CIDR)?))
                .map_err(map_err(POLICY_CIDR))?,
            enforced: HashMap::try_from(Map::HashMap(lpm(POLICY_ENFORCED)?))
                .map_err(map_err(POLICY_ENFORCED))?,
            ipcache: HashMap::try_from(Map::HashMap(lpm(IPCACHE)?)).map_err(map_err(IPCACHE))?,
            flows: HashMap::try_from(Map::HashMap(lpm(POLICY_FLOWS)?))
                .map_err(map_err(POLICY_FLOWS))?,
            flow_use: HashMap::try_from(Map::HashMap(lpm(POLICY_FLOW_USE)?))
                .map_err(map_err(POLICY_FLOW_USE))?,
        })
    }

    /// Allows what `entry` says, recording `rule_id` as the reason.
    pub fn allow(&mut self, entry: &AllowEntry, rule_id: u32) -> Result<()> {
        let value = PolicyValue { rule_id, flags: 0 };
        self.entries
            .insert(&entry.key(), value, 0)
            .map_err(map_err(POLICY))
    }

    /// Removes an allow entry; returns whether it was there.
    pub fn revoke(&mut self, entry: &AllowEntry) -> Result<bool> {
        match self.entries.remove(&entry.key()) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(POLICY)(e)),
        }
    }

    /// Maps the addresses `addr/prefix_len` seen by `endpoint` in `direction` to `class` (an
    /// `ipBlock` class identity).
    pub fn set_cidr_class(
        &mut self,
        endpoint: u32,
        direction: u8,
        addr: Ipv4Addr,
        prefix_len: u8,
        class: u32,
    ) -> Result<()> {
        self.cidrs
            .insert(&cidr_key(endpoint, direction, addr, prefix_len), class, 0)
            .map_err(map_err(POLICY_CIDR))
    }

    pub fn remove_cidr_class(
        &mut self,
        endpoint: u32,
        direction: u8,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<bool> {
        match self
            .cidrs
            .remove(&cidr_key(endpoint, direction, addr, prefix_len))
        {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(POLICY_CIDR)(e)),
        }
    }

    /// Which directions `endpoint` enforces (`POLICY_*_ENFORCED` bits; 0: none).
    pub fn set_enforcement(&mut self, endpoint: u32, flags: u32) -> Result<()> {
        self.enforced
            .insert(endpoint, flags, 0)
            .map_err(map_err(POLICY_ENFORCED))
    }

    /// Forgets `endpoint`'s enforcement (its pod is gone).
    pub fn remove_endpoint(&mut self, endpoint: u32) -> Result<bool> {
        match self.enforced.remove(&endpoint) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(POLICY_ENFORCED)(e)),
        }
    }

    /// The security identity of address `ip`.
    pub fn set_identity(&mut self, ip: Ipv4Addr, identity: u32) -> Result<()> {
        self.ipcache
            .insert(ip.octets(), identity, 0)
            .map_err(map_err(IPCACHE))
    }

    /// The identity `IPCACHE` holds for `ip`.
    pub fn identity(&self, ip: Ipv4Addr) -> Result<Option<u32>> {
        match self.ipcache.get(&ip.octets(), 0) {
            Ok(identity) => Ok(Some(identity)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(IPCACHE)(e)),
        }
    }

    pub fn remove_identity(&mut self, ip: Ipv4Addr) -> Result<bool> {
        match self.ipcache.remove(&ip.octets()) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(IPCACHE)(e)),
        }
    }

    /// The flows the endpoints let through (a snapshot: the programs add meanwhile; a walk
    /// disturbed by a removal may see a flow twice, never more than the map can hold).
    pub fn tracked_flows(&self) -> Result<Vec<PolicyFlowKey>> {
        let mut flows = Vec::new();
        for key in self.flows.keys().take(POLICY_FLOWS_MAX_ENTRIES as usize) {
            match key {
                Ok(key) => flows.push(key),
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(map_err(POLICY_FLOWS)(e)),
            }
        }
        // A key differing only in protocol is another flow: it sorts apart too, so that `dedup`
        // (which compares neighbours) sees every repeat.
        flows.sort_unstable_by_key(|f| {
            (
                f.endpoint, f.saddr, f.daddr, f.sport_be, f.dport_be, f.protocol,
            )
        });
        flows.dedup();
        Ok(flows)
    }

    /// A remembered flow's state.
    pub fn flow(&self, flow: &PolicyFlowKey) -> Result<Option<PolicyFlow>> {
        match self.flows.get(flow, 0) {
            Ok(value) => Ok(Some(value)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(POLICY_FLOWS)(e)),
        }
    }

    /// Forgets a flow: its next packet is judged again. Returns whether it was tracked.
    pub fn forget_flow(&mut self, flow: &PolicyFlowKey) -> Result<bool> {
        match self.flows.remove(flow) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(POLICY_FLOWS)(e)),
        }
    }

    /// How many flows `endpoint` holds, as the programs count them against its share.
    pub fn flows_held(&self, endpoint: u32) -> Result<u32> {
        match self.flow_use.get(&endpoint, 0) {
            Ok(count) => Ok(count),
            Err(e) if is_not_found(&e) => Ok(0),
            Err(e) => Err(map_err(POLICY_FLOW_USE)(e)),
        }
    }

    /// Forgets the flows idle past their lifetime at `now` (seconds of `CLOCK_MONOTONIC`, the
    /// programs' clock) and those of endpoints that no longer enforce anything, then writes each
    /// endpoint's true count back to `POLICY_FLOW_USE` (the programs only ever add to it).
    pub fn sweep_flows(&mut self, now: u32) -> Result<FlowSweep> {
        let mut sweep = FlowSweep::default();
        let mut held: BTreeMap<u32, u32> = BTreeMap::new();
        // Looked up once per endpoint, not once per flow.
        let mut enforcing_endpoints: BTreeMap<u32, bool> = BTreeMap::new();
        for key in self.tracked_flows()? {
            let Some(flow) = self.flow(&key)? else {
                continue;
            };
            let enforcing = *enforcing_endpoints.entry(key.endpoint).or_insert_with(
                || matches!(self.enforced.get(&key.endpoint, 0), Ok(flags) if flags != 0),
            );
            let idle = now.saturating_sub(flow.last_seen);
            if !enforcing || idle > flow_idle_seconds(flow.flags, key.protocol) {
                if self.forget_flow(&key)? {
                    sweep.removed += 1;
                }
            } else {
                sweep.kept += 1;
                *held.entry(key.endpoint).or_default() += 1;
            }
        }
        // Counted while the programs went on adding: a flow remembered during the walk may be
        // missed until the next sweep, which lets an endpoint go past its share by that much.
        let mut stale = Vec::new();
        for endpoint in self.flow_use.keys().take(POLICY_FLOWS_MAX_ENTRIES as usize) {
            match endpoint {
                Ok(endpoint) if !held.contains_key(&endpoint) => stale.push(endpoint),
                Ok(_) => {}
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(map_err(POLICY_FLOW_USE)(e)),
            }
        }
        for endpoint in stale {
            match self.flow_use.remove(&endpoint) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(POLICY_FLOW_USE)(e)),
            }
        }
        for (endpoint, count) in held {
            self.flow_use
                .insert(endpoint, count, 0)
                .map_err(map_err(POLICY_FLOW_USE))?;
        }
        Ok(sweep)
    }
}

/// What the maps say of one packet, looked up in the programs' order (see `ebpf/src/policy.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapVerdict {
    /// The endpoint enforces this direction.
    pub enforced: bool,
    /// The peer's identity (`IPCACHE`, else world).
    pub peer_identity: u32,
    /// The identity the allowing entry was found for: the peer's, any (0), or an `ipBlock` class.
    pub matched_identity: Option<u32>,
    /// The allowing entry's rule number (0: the node's own allowance).
    pub rule_id: Option<u32>,
}

impl MapVerdict {
    pub fn allowed(&self) -> bool {
        !self.enforced || self.rule_id.is_some()
    }
}

impl PolicyMaps {
    /// Judges a new flow's first packet as the programs would, from the maps alone (flows
    /// already tracked pass whatever this says).
    pub fn trace(
        &self,
        endpoint: u32,
        direction: u8,
        peer: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> Result<MapVerdict> {
        let flags = match self.enforced.get(&endpoint, 0) {
            Ok(flags) => flags,
            Err(e) if is_not_found(&e) => 0,
            Err(e) => return Err(map_err(POLICY_ENFORCED)(e)),
        };
        let bit = if direction == apiary_ebpf_common::POLICY_INGRESS {
            apiary_ebpf_common::POLICY_INGRESS_ENFORCED
        } else {
            apiary_ebpf_common::POLICY_EGRESS_ENFORCED
        };
        let peer_identity = match self.ipcache.get(&peer.octets(), 0) {
            Ok(identity) => identity,
            Err(e) if is_not_found(&e) => apiary_ebpf_common::IDENTITY_WORLD,
            Err(e) => return Err(map_err(IPCACHE)(e)),
        };
        let mut verdict = MapVerdict {
            enforced: flags & bit != 0,
            peer_identity,
            matched_identity: None,
            rule_id: None,
        };
        if !verdict.enforced {
            return Ok(verdict);
        }
        let lookup = |identity: u32| -> Result<Option<u32>> {
            let entry = AllowEntry {
                endpoint,
                identity,
                direction,
                protocol,
                port,
                port_prefix_len: 16,
            };
            // A full-length key (a packet has a protocol): the trie answers with the longest
            // stored prefix of it.
            match self.entries.get(&entry.key(), 0) {
                Ok(value) => Ok(Some(value.rule_id)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(map_err(POLICY)(e)),
            }
        };
        let class = match self.cidrs.get(&cidr_key(endpoint, direction, peer, 32), 0) {
            Ok(class) => Some(class),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(map_err(POLICY_CIDR)(e)),
        };
        for identity in [
            Some(peer_identity),
            Some(apiary_ebpf_common::IDENTITY_ANY),
            class,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(rule) = lookup(identity)? {
                verdict.matched_identity = Some(identity);
                verdict.rule_id = Some(rule);
                break;
            }
        }
        Ok(verdict)
    }
}

fn cidr_key(endpoint: u32, direction: u8, addr: Ipv4Addr, prefix_len: u8) -> Key<PolicyCidrData> {
    Key::new(
        POLICY_CIDR_PREFIX_BASE + u32::from(prefix_len.min(32)),
        PolicyCidrData {
            endpoint_be: endpoint.to_be_bytes(),
            direction,
            pad: [0; 3],
            addr: addr.octets(),
        },
    )
}

/// The verdicts the programs report, in order.
pub struct PolicyEvents {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for PolicyEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEvents").finish_non_exhaustive()
    }
}

impl PolicyEvents {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let data =
            MapData::from_pin(pin_dir.join(POLICY_EVENTS)).map_err(map_err(POLICY_EVENTS))?;
        Ok(Self {
            ring: RingBuf::try_from(Map::RingBuf(data)).map_err(map_err(POLICY_EVENTS))?,
        })
    }

    /// Every verdict waiting in the ring (none: empty).
    pub fn drain(&mut self) -> Vec<PolicyVerdict> {
        let mut verdicts = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<PolicyVerdict>() {
                // SAFETY: the programs write whole `PolicyVerdict`s (`repr(C)`, valid for any bit
                // pattern); the length is checked and the read is unaligned-safe.
                verdicts.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        verdicts
    }
}

/// Every drop counter (`POLICY_DROPS`), summed over the CPUs.
pub fn policy_drops(pin_dir: &Path) -> Result<Vec<(PolicyDropKey, u64)>> {
    let data = MapData::from_pin(pin_dir.join(POLICY_DROPS)).map_err(map_err(POLICY_DROPS))?;
    let map: PerCpuHashMap<MapData, PolicyDropKey, u64> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).map_err(map_err(POLICY_DROPS))?;
    let mut drops = map
        .iter()
        .map(|entry| entry.map(|(key, per_cpu)| (key, per_cpu.iter().sum::<u64>())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err(POLICY_DROPS))?;
    drops.sort_unstable_by_key(|(key, _)| *key);
    Ok(drops)
}
