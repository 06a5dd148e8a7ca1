//! Typed access to the `ENDPOINTS` map: the pods of this node by address.

use std::{net::Ipv4Addr, path::Path};

use apiary_ebpf_common::{ENDPOINTS, Endpoint};
use aya::maps::{HashMap, Map, MapData, MapError};

use super::{Error, Result};

/// The local pod endpoints, opened through their bpffs pin.
pub struct EndpointMap {
    map: HashMap<MapData, [u8; 4], Endpoint>,
}

impl std::fmt::Debug for EndpointMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointMap").finish_non_exhaustive()
    }
}

impl EndpointMap {
    /// Opens the map pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let data = MapData::from_pin(pin_dir.join(ENDPOINTS)).map_err(map_err)?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(map_err)?;
        Ok(Self { map })
    }

    /// Adds or replaces the endpoint of `ip`.
    pub fn upsert(&mut self, ip: Ipv4Addr, endpoint: Endpoint) -> Result<()> {
        self.map.insert(ip.octets(), endpoint, 0).map_err(map_err)
    }

    /// Removes the endpoint of `ip`; returns whether there was one.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<bool> {
        match self.map.remove(&ip.octets()) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    pub fn get(&self, ip: Ipv4Addr) -> Result<Option<Endpoint>> {
        match self.map.get(&ip.octets(), 0) {
            Ok(endpoint) => Ok(Some(endpoint)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Every endpoint, by address.
    pub fn all(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>> {
        let mut all = self
            .map
            .iter()
            .map(|entry| entry.map(|(ip, endpoint)| (Ipv4Addr::from(ip), endpoint)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)?;
        all.sort_unstable_by_key(|(ip, _)| *ip);
        Ok(all)
    }
}

pub(super) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn map_err(source: MapError) -> Error {
    Error::Map {
        name: ENDPOINTS,
        source,
    }
}
