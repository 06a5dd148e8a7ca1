//! Typed access to the `POD_TRAFFIC` map: packets and bytes per pod.

use std::path::Path;

use apiary_ebpf_common::{POD_TRAFFIC, PodTraffic};
use aya::{
    maps::{Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};

use super::{Error, Result};

/// `BPF_NOEXIST` from `linux/bpf.h`: create only, keep an existing entry.
const BPF_NOEXIST: u64 = 1;

/// The per-pod counters, opened through their bpffs pin so that any process on the node can read
/// them.
pub struct PodTrafficMap {
    map: PerCpuHashMap<MapData, u32, PodTraffic>,
}

impl std::fmt::Debug for PodTrafficMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTrafficMap").finish_non_exhaustive()
    }
}

impl PodTrafficMap {
    /// Opens the map pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let data = MapData::from_pin(pin_dir.join(POD_TRAFFIC)).map_err(map_err)?;
        let map = PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).map_err(map_err)?;
        Ok(Self { map })
    }

    /// Starts counting for the host-side veth `ifindex`. Keeps existing counters.
    pub fn register(&mut self, ifindex: u32) -> Result<()> {
        let cpus = nr_cpus().map_err(|(_, io_error)| {
            map_err(MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            }))
        })?;
        let zeros =
            PerCpuValues::try_from(vec![PodTraffic::default(); cpus]).map_err(|io_error| {
                map_err(MapError::SyscallError(aya::sys::SyscallError {
                    call: "PerCpuValues",
                    io_error,
                }))
            })?;
        match self.map.insert(ifindex, zeros, BPF_NOEXIST) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            other => other.map_err(map_err),
        }
    }

    /// Stops counting for `ifindex`; returns whether it was registered.
    pub fn unregister(&mut self, ifindex: u32) -> Result<bool> {
        match self.map.remove(&ifindex) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    /// The counters of `ifindex`, summed over CPUs; `None` when it is not registered.
    pub fn get(&self, ifindex: u32) -> Result<Option<PodTraffic>> {
        match self.map.get(&ifindex, 0) {
            Ok(per_cpu) => Ok(Some(sum(&per_cpu))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Every registered interface with its counters, by ifindex.
    pub fn all(&self) -> Result<Vec<(u32, PodTraffic)>> {
        let mut all = self
            .map
            .iter()
            .map(|entry| entry.map(|(ifindex, per_cpu)| (ifindex, sum(&per_cpu))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)?;
        all.sort_unstable_by_key(|(ifindex, _)| *ifindex);
        Ok(all)
    }
}

fn sum(per_cpu: &PerCpuValues<PodTraffic>) -> PodTraffic {
    per_cpu
        .iter()
        .fold(PodTraffic::default(), |total, cpu| total.merged(*cpu))
}

fn map_err(source: MapError) -> Error {
    Error::Map {
        name: POD_TRAFFIC,
        source,
    }
}
