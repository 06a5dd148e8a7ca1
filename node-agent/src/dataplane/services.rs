//! Typed access to the service load-balancing maps: frontends (`SERVICES`), `BACKENDS`, the
//! `MAGLEV` tables, and the per-client state the programs keep (`AFFINITY`, `SOCK_REVNAT`).
//!
//! The programs read these maps while the agent writes them, one entry at a time. Writers keep
//! every intermediate state usable: a backend exists before a table names it, a table before its
//! frontend points at it, and a backend goes only after no table names it.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use apiary_ebpf_common::{
    AFFINITY, AffinityKey, AffinityValue, BACKENDS, Backend, CT, CtKey, CtValue, LOCAL_NETNS,
    MAGLEV, MaglevTable, NODE_ADDRS, SERVICES, ServiceKey, ServiceValue,
};
use aya::maps::{HashMap, Map, MapData};

use super::{Error, Result, endpoints::is_not_found};

/// A hash map opened through its pin; `lru` for the programs' LRU maps.
fn open<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    lru: bool,
) -> Result<HashMap<MapData, K, V>> {
    let err = |source| Error::Map { name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err)?;
    let map = if lru {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    HashMap::try_from(map).map_err(err)
}

/// Every entry of `map`, keys ordered.
fn entries<K: aya::Pod + Ord, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>> {
    map.iter()
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(|source| Error::Map { name, source })
}

/// Removes `key`; a missing key is not an error (someone removed it first).
fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<bool> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// The frontends, backends and Maglev tables.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
}

impl std::fmt::Debug for ServiceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMaps").finish_non_exhaustive()
    }
}

impl ServiceMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open(pin_dir, SERVICES, false)?,
            backends: open(pin_dir, BACKENDS, false)?,
            maglev: open(pin_dir, MAGLEV, false)?,
            affinity: open(pin_dir, AFFINITY, true)?,
        })
    }

    /// Every frontend.
    pub fn frontends(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>> {
        entries(&self.services, SERVICES)
    }

    /// Every backend by id.
    pub fn backends(&self) -> Result<BTreeMap<u32, Backend>> {
        entries(&self.backends, BACKENDS)
    }

    /// The Maglev table of frontend `id`, if it has one.
    pub fn table(&self, id: u32) -> Result<Option<MaglevTable>> {
        match self.maglev.get(&id, 0) {
            Ok(table) => Ok(Some(table)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(Error::Map {
                name: MAGLEV,
                source,
            }),
        }
    }

    pub fn insert_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|source| Error::Map {
                name: BACKENDS,
                source,
            })
    }

    /// Removes backend `id`: only once no table names it any more.
    pub fn remove_backend(&mut self, id: u32) -> Result<bool> {
        remove(&mut self.backends, BACKENDS, &id)
    }

    /// Writes frontend `id`'s table (before its frontend points at it).
    pub fn write_table(&mut self, id: u32, table: &MaglevTable) -> Result<()> {
        self.maglev
            .insert(id, table, 0)
            .map_err(|source| Error::Map {
                name: MAGLEV,
                source,
            })
    }

    /// Removes frontend `id`'s table; returns whether there was one.
    pub fn remove_table(&mut self, id: u32) -> Result<bool> {
        remove(&mut self.maglev, MAGLEV, &id)
    }

    /// Writes frontend `key` (its table, if it has backends, must be written first).
    pub fn write_frontend(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(|source| Error::Map {
                name: SERVICES,
                source,
            })
    }

    /// Removes frontend `key` only (not its table); returns whether there was one.
    pub fn remove_frontend_only(&mut self, key: &ServiceKey) -> Result<bool> {
        remove(&mut self.services, SERVICES, key)
    }

    /// Points frontend `key` at its backends: the table first (a hash map swaps a whole value
    /// in one step, so lookups see the old table or the new one), then the frontend.
    pub fn upsert_frontend(
        &mut self,
        key: ServiceKey,
        value: ServiceValue,
        table: Option<&MaglevTable>,
    ) -> Result<()> {
        match table {
            Some(table) => self
                .maglev
                .insert(value.id, table, 0)
                .map_err(|source| Error::Map {
                    name: MAGLEV,
                    source,
                })?,
            None => {
                remove(&mut self.maglev, MAGLEV, &value.id)?;
            }
        }
        self.services
            .insert(key, value, 0)
            .map_err(|source| Error::Map {
                name: SERVICES,
                source,
            })
    }

    /// Removes frontend `key` and its table.
    pub fn remove_frontend(&mut self, key: &ServiceKey) -> Result<bool> {
        let id = match self.services.get(key, 0) {
            Ok(value) => value.id,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(source) => {
                return Err(Error::Map {
                    name: SERVICES,
                    source,
                });
            }
        };
        remove(&mut self.services, SERVICES, key)?;
        remove(&mut self.maglev, MAGLEV, &id)?;
        Ok(true)
    }

    /// Forgets the session-affinity entries that name a backend their frontend no longer has
    /// (or a frontend that is gone): the client's next connection chooses afresh.
    pub fn prune_affinity(&mut self, keep: impl Fn(u32, u32) -> bool) -> Result<usize> {
        let stale: Vec<AffinityKey> = entries_unordered(&self.affinity, AFFINITY)?
            .into_iter()
            .filter(|(key, value)| !keep(key.service_id, value.backend_id))
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            remove(&mut self.affinity, AFFINITY, key)?;
        }
        Ok(stale.len())
    }
}

fn entries_unordered<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    map.iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Map { name, source })
}

/// The network namespaces whose sockets this node load-balances (`LOCAL_NETNS`).
pub struct LocalNetnsMap {
    map: HashMap<MapData, u64, [u8; 4]>,
}

impl std::fmt::Debug for LocalNetnsMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetnsMap").finish_non_exhaustive()
    }
}

impl LocalNetnsMap {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            map: open(pin_dir, LOCAL_NETNS, false)?,
        })
    }

    /// Serves namespace `cookie`, which belongs to the pod at `pod_ip` (`None`: the node's own).
    pub fn register(&mut self, cookie: u64, pod_ip: Option<Ipv4Addr>) -> Result<()> {
        let owner = pod_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets();
        self.map
            .insert(cookie, owner, 0)
            .map_err(|source| Error::Map {
                name: LOCAL_NETNS,
                source,
            })
    }

    /// Stops serving the namespaces of the pod at `pod_ip`; returns how many there were.
    pub fn unregister_pod(&mut self, pod_ip: Ipv4Addr) -> Result<usize> {
        self.unregister_where(|owner| owner == Some(pod_ip))
    }

    /// Stops serving every namespace for which `gone(owner)` holds (`None`: the node's own).
    pub fn unregister_where(&mut self, gone: impl Fn(Option<Ipv4Addr>) -> bool) -> Result<usize> {
        let stale: Vec<u64> = entries_unordered(&self.map, LOCAL_NETNS)?
            .into_iter()
            .filter(|(_, owner)| gone(owner_of(*owner)))
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in &stale {
            remove(&mut self.map, LOCAL_NETNS, cookie)?;
        }
        Ok(stale.len())
    }

    /// Every namespace served, with its pod (`None`: the node's own).
    pub fn all(&self) -> Result<BTreeMap<u64, Option<Ipv4Addr>>> {
        Ok(entries(&self.map, LOCAL_NETNS)?
            .into_iter()
            .map(|(cookie, owner)| (cookie, owner_of(owner)))
            .collect())
    }
}

fn owner_of(owner: [u8; 4]) -> Option<Ipv4Addr> {
    let ip = Ipv4Addr::from(owner);
    (!ip.is_unspecified()).then_some(ip)
}

/// This node's own addresses (`NODE_ADDRS`): where NodePorts answer.
pub struct NodeAddrsMap {
    map: HashMap<MapData, [u8; 4], u32>,
}

impl std::fmt::Debug for NodeAddrsMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAddrsMap").finish_non_exhaustive()
    }
}

impl NodeAddrsMap {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            map: open(pin_dir, NODE_ADDRS, false)?,
        })
    }

    /// Makes the map hold exactly `addrs` (added before stale ones go).
    pub fn set(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        for addr in addrs {
            self.map
                .insert(addr.octets(), 0, 0)
                .map_err(|source| Error::Map {
                    name: NODE_ADDRS,
                    source,
                })?;
        }
        let stale: Vec<[u8; 4]> = entries_unordered(&self.map, NODE_ADDRS)?
            .into_iter()
            .map(|(addr, _)| addr)
            .filter(|addr| !addrs.contains(&Ipv4Addr::from(*addr)))
            .collect();
        for addr in &stale {
            remove(&mut self.map, NODE_ADDRS, addr)?;
        }
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(entries(&self.map, NODE_ADDRS)?
            .into_keys()
            .map(Ipv4Addr::from)
            .collect())
    }
}

/// The connection-tracking map of NodePort flows (`CT`).
pub struct CtMap {
    map: HashMap<MapData, CtKey, CtValue>,
}

impl std::fmt::Debug for CtMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtMap").finish_non_exhaustive()
    }
}

impl CtMap {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            map: open(pin_dir, CT, true)?,
        })
    }

    /// Removes every entry for which `stale(key, value)` holds; returns how many went.
    pub fn flush(&mut self, stale: impl Fn(&CtKey, &CtValue) -> bool) -> Result<usize> {
        let gone: Vec<CtKey> = entries_unordered(&self.map, CT)?
            .into_iter()
            .filter(|(key, value)| stale(key, value))
            .map(|(key, _)| key)
            .collect();
        for key in &gone {
            remove(&mut self.map, CT, key)?;
        }
        Ok(gone.len())
    }

    pub fn all(&self) -> Result<Vec<(CtKey, CtValue)>> {
        entries_unordered(&self.map, CT)
    }
}
