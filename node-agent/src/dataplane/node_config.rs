//! Typed access to the `NODE_CONFIG` array: this node's settings for the programs.

use std::path::Path;

use apiary_ebpf_common::{NODE_CONFIG, NodeConfig};
use aya::maps::{Array, Map, MapData, MapError};

use super::{Error, Result};

/// The node settings, opened through their bpffs pin.
pub struct NodeConfigMap {
    map: Array<MapData, NodeConfig>,
}

impl std::fmt::Debug for NodeConfigMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfigMap").finish_non_exhaustive()
    }
}

impl NodeConfigMap {
    /// Opens the map pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let data = MapData::from_pin(pin_dir.join(NODE_CONFIG)).map_err(map_err)?;
        let map = Array::try_from(Map::Array(data)).map_err(map_err)?;
        Ok(Self { map })
    }

    pub fn get(&self) -> Result<NodeConfig> {
        self.map.get(&0, 0).map_err(map_err)
    }

    pub fn set(&mut self, config: NodeConfig) -> Result<()> {
        self.map.set(0, config, 0).map_err(map_err)
    }
}

fn map_err(source: MapError) -> Error {
    Error::Map {
        name: NODE_CONFIG,
        source,
    }
}
