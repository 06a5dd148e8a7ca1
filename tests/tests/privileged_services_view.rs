//! What `GET /apiary/v1/services` shows, read from real pinned maps: frontends and backends
//! written with the agent's typed map wrappers come back with host-order ports, their Service
//! names, and each backend's share of the Maglev table.

use std::collections::BTreeMap;

use apiary_ebpf_common::{
    Backend, MAGLEV_TABLE_SIZE, MaglevTable, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_SOCKET,
    SERVICE_AFFINITY, ServiceKey, ServiceValue,
};
use apiary_node_agent::{
    dataplane::Dataplane,
    server::{PinnedServices, ServiceNames, ServiceSource as _},
};
use apiary_tests::{lab::Lab, require_privileges};

fn backend(addr: [u8; 4], port: u16, protocol: u8) -> Backend {
    Backend {
        addr,
        port_be: port.to_be(),
        protocol,
        flags: 0,
    }
}

#[test]
fn pinned_frontends_show_their_backends_and_slot_shares() {
    require_privileges!();
    let lab = Lab::new().unwrap();
    let pin_dir = lab.pin_dir("services");
    let dataplane = Dataplane::load(&pin_dir).unwrap();
    let mut maps = dataplane.services().unwrap();

    maps.insert_backend(3, backend([10, 244, 1, 5], 6443, PROTO_TCP))
        .unwrap();
    maps.insert_backend(4, backend([10, 244, 2, 7], 6443, PROTO_TCP))
        .unwrap();
    maps.insert_backend(5, backend([10, 244, 2, 8], 5353, PROTO_UDP))
        .unwrap();
    // 700 slots for backend 3, the rest for 4.
    let table = MaglevTable {
        backend_ids: std::array::from_fn(|slot| if slot < 700 { 3 } else { 4 }),
    };
    let api = ServiceKey {
        addr: [10, 96, 0, 1],
        port_be: 443u16.to_be(),
        protocol: PROTO_TCP,
        scope: SCOPE_SOCKET,
    };
    maps.upsert_frontend(
        api,
        ServiceValue {
            id: 7,
            backend_count: 2,
            flags: SERVICE_AFFINITY,
            affinity_timeout_secs: 10800,
        },
        Some(&table),
    )
    .unwrap();
    let node_port = ServiceKey {
        addr: [0; 4],
        port_be: 30053u16.to_be(),
        protocol: PROTO_UDP,
        scope: SCOPE_EXTERNAL,
    };
    maps.upsert_frontend(
        node_port,
        ServiceValue {
            id: 8,
            backend_count: 1,
            flags: 0,
            affinity_timeout_secs: 0,
        },
        Some(&MaglevTable {
            backend_ids: [5; MAGLEV_TABLE_SIZE],
        }),
    )
    .unwrap();
    let empty = ServiceKey {
        addr: [10, 96, 0, 20],
        port_be: 80u16.to_be(),
        protocol: PROTO_TCP,
        scope: SCOPE_SOCKET,
    };
    maps.upsert_frontend(
        empty,
        ServiceValue {
            id: 9,
            backend_count: 0,
            flags: 0,
            affinity_timeout_secs: 0,
        },
        None,
    )
    .unwrap();

    let names = ServiceNames::default();
    names.write().unwrap().extend(BTreeMap::from([(
        api,
        "default/kubernetes:https".to_owned(),
    )]));
    let source = PinnedServices {
        pin_dir: pin_dir.clone(),
        names,
    };
    let view = serde_json::to_value(source.frontends().unwrap()).unwrap();
    assert_eq!(
        view,
        serde_json::json!([
            {
                "frontend": { "address": "0.0.0.0", "port": 30053, "protocol": "UDP", "scope": "external" },
                "id": 8, "flags": [], "affinityTimeoutSeconds": 0, "backendCount": 1, "service": null,
                "backends": [{ "id": 5, "address": "10.244.2.8", "port": 5353, "protocol": "UDP", "slots": 1021 }],
            },
            {
                "frontend": { "address": "10.96.0.1", "port": 443, "protocol": "TCP", "scope": "socket" },
                "id": 7, "flags": ["affinity"], "affinityTimeoutSeconds": 10800, "backendCount": 2,
                "service": "default/kubernetes:https",
                "backends": [
                    { "id": 3, "address": "10.244.1.5", "port": 6443, "protocol": "TCP", "slots": 700 },
                    { "id": 4, "address": "10.244.2.7", "port": 6443, "protocol": "TCP", "slots": 321 },
                ],
            },
            {
                "frontend": { "address": "10.96.0.20", "port": 80, "protocol": "TCP", "scope": "socket" },
                "id": 9, "flags": [], "affinityTimeoutSeconds": 0, "backendCount": 0, "service": null,
                "backends": [],
            },
        ])
    );
}
