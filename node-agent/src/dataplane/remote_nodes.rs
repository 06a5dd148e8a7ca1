//! Typed access to the `REMOTE_NODES` LPM trie: other nodes' pod CIDRs (and addresses) to the node
//! that owns them.

use std::{net::Ipv4Addr, path::Path};

use apiary_ebpf_common::{REMOTE_NODES, RemoteNode};
use aya::maps::{
    Map, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;

use super::{Error, Result, endpoints::is_not_found};

/// The remote node routes, opened through their bpffs pin.
pub struct RemoteNodeMap {
    map: LpmTrie<MapData, [u8; 4], RemoteNode>,
}

impl std::fmt::Debug for RemoteNodeMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNodeMap").finish_non_exhaustive()
    }
}

impl RemoteNodeMap {
    /// Opens the map pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let data = MapData::from_pin(pin_dir.join(REMOTE_NODES)).map_err(map_err)?;
        let map = LpmTrie::try_from(Map::LpmTrie(data)).map_err(map_err)?;
        Ok(Self { map })
    }

    /// Sends `prefix` to `node_ip`, replacing what it was sent to before.
    pub fn upsert(&mut self, prefix: Ipv4Net, node_ip: Ipv4Addr) -> Result<()> {
        let value = RemoteNode {
            node_ip_be: node_ip.octets(),
            flags: 0,
        };
        self.map.insert(&key(prefix), value, 0).map_err(map_err)
    }

    /// Removes `prefix`; returns whether it was there.
    pub fn remove(&mut self, prefix: Ipv4Net) -> Result<bool> {
        match self.map.remove(&key(prefix)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Every prefix with its node, sorted.
    pub fn all(&self) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
        let mut all = Vec::new();
        for entry in self.map.iter() {
            let (key, node) = entry.map_err(map_err)?;
            let prefix =
                Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8).map_err(|_| {
                    map_err(MapError::InvalidKeySize {
                        size: key.prefix_len() as usize,
                        expected: 32,
                    })
                })?;
            all.push((prefix, Ipv4Addr::from(node.node_ip_be)));
        }
        all.sort_unstable();
        Ok(all)
    }
}

fn key(prefix: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(prefix.prefix_len()), prefix.network().octets())
}

fn map_err(source: MapError) -> Error {
    Error::Map {
        name: REMOTE_NODES,
        source,
    }
}
