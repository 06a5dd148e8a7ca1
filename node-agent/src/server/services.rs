//! `GET /apiary/v1/services`: what this node's service load-balancing maps hold, one entry per
//! frontend with the backends its Maglev table names — the data plane's view, not the API's.
//!
//! [`describe`] turns the maps' contents into that view; [`PinnedServices`] reads them from the
//! pinned maps. The Service a frontend belongs to is not in the maps: whoever programs them
//! records it in [`ServiceNames`].

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use apiary_ebpf_common::{
    Backend, MaglevTable, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_SOCKET,
    SERVICE_AFFINITY, SERVICE_LOCAL, ServiceKey, ServiceValue,
};
use axum::{
    Json,
    extract::State,
    response::{IntoResponse as _, Response},
};
use serde::{Deserialize, Serialize};

use super::StreamError;

/// The Service (`namespace/name:port`) behind each frontend, as the code that programs the maps
/// knows it; frontends missing here are shown with `service: null`.
pub type ServiceNames = Arc<RwLock<BTreeMap<ServiceKey, String>>>;

/// One frontend of the `SERVICES` map, with its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendView {
    pub frontend: FrontendAddress,
    /// The frontend's id (key of its Maglev table).
    pub id: u32,
    /// `affinity` (`sessionAffinity: ClientIP`), `local` (node-local backends only); unknown bits
    /// as `0x…`.
    pub flags: Vec<String>,
    pub affinity_timeout_seconds: u32,
    /// How many backends the frontend says its table has (`ServiceValue::backend_count`).
    pub backend_count: u32,
    /// `namespace/name:port`, when known.
    pub service: Option<String>,
    /// The backends the Maglev table names, by address; empty when `backend_count` is 0.
    pub backends: Vec<BackendView>,
}

/// What clients address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendAddress {
    /// `0.0.0.0` for NodePorts (every node address).
    pub address: Ipv4Addr,
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`, or the protocol number.
    pub protocol: String,
    /// `socket` (connect-time translation) or `external` (packets from outside the node).
    pub scope: String,
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub id: u32,
    /// `None` (and so `port`, `protocol`) when the table names an id that `BACKENDS` lacks.
    pub address: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
    /// How many of the Maglev table's slots name this backend: its share of new connections.
    pub slots: u32,
}

/// The view of the maps' contents: frontends ordered by address, port, protocol and scope;
/// `tables(id)` is frontend `id`'s Maglev table.
pub fn describe(
    frontends: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<u32, Backend>,
    tables: impl Fn(u32) -> Option<MaglevTable>,
    names: &BTreeMap<ServiceKey, String>,
) -> Vec<FrontendView> {
    let mut views: Vec<(ServiceKey, FrontendView)> = frontends
        .into_iter()
        .map(|(key, value)| {
            let backends = if value.backend_count == 0 {
                Vec::new()
            } else {
                tables(value.id)
                    .map(|table| backends_of(&table, &backends))
                    .unwrap_or_default()
            };
            let view = FrontendView {
                frontend: FrontendAddress {
                    address: Ipv4Addr::from(key.addr),
                    port: u16::from_be(key.port_be),
                    protocol: protocol_name(key.protocol),
                    scope: scope_name(key.scope),
                },
                id: value.id,
                flags: flag_names(value.flags),
                affinity_timeout_seconds: value.affinity_timeout_secs,
                backend_count: value.backend_count,
                service: names.get(&key).cloned(),
                backends,
            };
            (key, view)
        })
        .collect();
    views.sort_by_key(|(key, view)| {
        (
            key.addr,
            view.frontend.port,
            key.protocol,
            key.scope,
            view.id,
        )
    });
    views.into_iter().map(|(_, view)| view).collect()
}

/// The distinct backends of `table` with their slot counts, by address and port.
fn backends_of(table: &MaglevTable, backends: &BTreeMap<u32, Backend>) -> Vec<BackendView> {
    let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
    for id in table.backend_ids {
        *slots.entry(id).or_default() += 1;
    }
    let mut views: Vec<BackendView> = slots
        .into_iter()
        .map(|(id, slots)| {
            let backend = backends.get(&id);
            BackendView {
                id,
                address: backend.map(|b| Ipv4Addr::from(b.addr)),
                port: backend.map(|b| u16::from_be(b.port_be)),
                protocol: backend.map(|b| protocol_name(b.protocol)),
                slots,
            }
        })
        .collect();
    views.sort_by_key(|b| (b.address, b.port, b.id));
    views
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        PROTO_TCP => "TCP".to_owned(),
        PROTO_UDP => "UDP".to_owned(),
        PROTO_SCTP => "SCTP".to_owned(),
        other => other.to_string(),
    }
}

fn scope_name(scope: u8) -> String {
    match scope {
        SCOPE_SOCKET => "socket".to_owned(),
        SCOPE_EXTERNAL => "external".to_owned(),
        other => other.to_string(),
    }
}

fn flag_names(flags: u32) -> Vec<String> {
    let mut names = Vec::new();
    if flags & SERVICE_AFFINITY != 0 {
        names.push("affinity".to_owned());
    }
    if flags & SERVICE_LOCAL != 0 {
        names.push("local".to_owned());
    }
    let unknown = flags & !(SERVICE_AFFINITY | SERVICE_LOCAL);
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    names
}

/// Where the server gets the frontends it shows.
pub trait ServiceSource: Send + Sync + 'static {
    /// The frontends now. May block (it reads BPF maps): the server calls it off the async
    /// workers.
    fn frontends(&self) -> anyhow::Result<Vec<FrontendView>>;
}

/// The maps pinned in `pin_dir`, named through `names`.
#[derive(Clone, Debug)]
pub struct PinnedServices {
    pub pin_dir: PathBuf,
    pub names: ServiceNames,
}

impl ServiceSource for PinnedServices {
    fn frontends(&self) -> anyhow::Result<Vec<FrontendView>> {
        let maps =
            crate::dataplane::services::ServiceMaps::open(&self.pin_dir).with_context(|| {
                format!(
                    "opening the service maps pinned in {}",
                    self.pin_dir.display()
                )
            })?;
        let frontends = maps.frontends()?;
        let backends = maps.backends()?;
        // Read every table first: `describe` cannot fail, and a failed read must not pass for
        // a missing table.
        let mut tables = BTreeMap::new();
        for value in frontends.values() {
            if let Some(table) = maps.table(value.id)? {
                tables.insert(value.id, table);
            }
        }
        let names = self
            .names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(describe(
            frontends,
            backends,
            |id| tables.get(&id).copied(),
            &names,
        ))
    }
}

/// `GET /apiary/v1/services`
pub(super) async fn handle(State(source): State<Arc<dyn ServiceSource>>) -> Response {
    let read = tokio::task::spawn_blocking(move || source.frontends()).await;
    match read {
        Ok(Ok(frontends)) => Json(frontends).into_response(),
        Ok(Err(e)) => StreamError::Internal(e.context("reading the service maps")).into_response(),
        Err(e) => {
            StreamError::Internal(anyhow::anyhow!("reading the service maps: {e}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use apiary_ebpf_common::MAGLEV_TABLE_SIZE;
    use serde_json::json;

    use super::*;

    fn key(addr: [u8; 4], port: u16, protocol: u8, scope: u8) -> ServiceKey {
        ServiceKey {
            addr,
            port_be: port.to_be(),
            protocol,
            scope,
        }
    }

    fn backend(addr: [u8; 4], port: u16) -> Backend {
        Backend {
            addr,
            port_be: port.to_be(),
            protocol: PROTO_TCP,
            flags: 0,
        }
    }

    /// A table whose first `first` slots name `a` and the rest `b`.
    fn table(a: u32, first: usize, b: u32) -> MaglevTable {
        let mut backend_ids = [b; MAGLEV_TABLE_SIZE];
        backend_ids[..first].fill(a);
        MaglevTable { backend_ids }
    }

    #[test]
    fn frontends_show_their_backends_by_slot_share() {
        let api = key([10, 96, 0, 1], 443, PROTO_TCP, SCOPE_SOCKET);
        let frontends = BTreeMap::from([(
            api,
            ServiceValue {
                id: 7,
                backend_count: 2,
                flags: SERVICE_AFFINITY | SERVICE_LOCAL,
                affinity_timeout_secs: 10800,
            },
        )]);
        let backends = BTreeMap::from([
            (3, backend([10, 244, 1, 5], 6443)),
            (4, backend([10, 244, 2, 7], 6443)),
        ]);
        let names = BTreeMap::from([(api, "default/kubernetes:https".to_owned())]);
        let views = describe(
            frontends,
            backends,
            |id| (id == 7).then(|| table(4, 510, 3)),
            &names,
        );
        assert_eq!(
            serde_json::to_value(&views).unwrap(),
            json!([{
                "frontend": { "address": "10.96.0.1", "port": 443, "protocol": "TCP", "scope": "socket" },
                "id": 7,
                "flags": ["affinity", "local"],
                "affinityTimeoutSeconds": 10800,
                "backendCount": 2,
                "service": "default/kubernetes:https",
                "backends": [
                    { "id": 3, "address": "10.244.1.5", "port": 6443, "protocol": "TCP", "slots": 511 },
                    { "id": 4, "address": "10.244.2.7", "port": 6443, "protocol": "TCP", "slots": 510 },
                ],
            }])
        );
    }

    #[test]
    fn frontends_without_backends_and_unknown_names_and_ids_show_as_such() {
        let empty = key([10, 96, 0, 9], 80, PROTO_UDP, SCOPE_SOCKET);
        let node_port = key([0, 0, 0, 0], 30080, PROTO_TCP, SCOPE_EXTERNAL);
        let frontends = BTreeMap::from([
            (
                empty,
                ServiceValue {
                    id: 1,
                    backend_count: 0,
                    flags: 1 << 5,
                    affinity_timeout_secs: 0,
                },
            ),
            (
                node_port,
                ServiceValue {
                    id: 2,
                    backend_count: 1,
                    flags: 0,
                    affinity_timeout_secs: 0,
                },
            ),
        ]);
        // A stale table for frontend 1 (its count says none) and one naming a backend that
        // BACKENDS does not hold.
        let views = describe(
            frontends,
            BTreeMap::new(),
            |id| Some(table(id + 40, 0, id + 40)),
            &BTreeMap::new(),
        );
        assert_eq!(views.len(), 2);
        // NodePorts (0.0.0.0) sort first.
        let (np, empty) = (&views[0], &views[1]);
        assert_eq!(np.frontend.address, Ipv4Addr::UNSPECIFIED);
        assert_eq!(np.frontend.port, 30080);
        assert_eq!(np.frontend.scope, "external");
        assert_eq!(np.service, None);
        assert_eq!(
            np.backends,
            [BackendView {
                id: 42,
                address: None,
                port: None,
                protocol: None,
                slots: MAGLEV_TABLE_SIZE as u32,
            }]
        );
        assert_eq!(empty.frontend.protocol, "UDP");
        assert_eq!(empty.flags, ["0x20"]);
        assert!(empty.backends.is_empty());
    }

    #[test]
    fn frontends_sort_by_port_number_not_by_its_bytes() {
        let vip = [10, 96, 0, 1];
        let value = |id| ServiceValue {
            id,
            backend_count: 0,
            flags: 0,
            affinity_timeout_secs: 0,
        };
        // 256 is 0x0100, 1 is 0x0001: in network byte order 256 sorts first.
        let frontends = BTreeMap::from([
            (key(vip, 256, PROTO_TCP, SCOPE_SOCKET), value(1)),
            (key(vip, 1, PROTO_TCP, SCOPE_SOCKET), value(2)),
        ]);
        let ports: Vec<u16> = describe(frontends, BTreeMap::new(), |_| None, &BTreeMap::new())
            .iter()
            .map(|v| v.frontend.port)
            .collect();
        assert_eq!(ports, [1, 256]);
    }

    #[test]
    fn a_missing_pin_dir_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let source = PinnedServices {
            pin_dir: dir.path().join("nothing"),
            names: ServiceNames::default(),
        };
        let e = format!("{:#}", source.frontends().unwrap_err());
        assert!(
            e.contains("opening the service maps pinned in") && e.contains("nothing"),
            "{e}"
        );
    }
}
