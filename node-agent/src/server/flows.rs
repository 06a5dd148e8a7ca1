//! `GET /apiary/v1/flows[?follow=true]`: the policy verdicts of this node's new flows, as the
//! programs reported them (Hubble-style), newest last, one JSON object per line; with `follow`
//! the response stays open and streams new ones.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{Query, State},
    http::header,
    response::{IntoResponse as _, Response},
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What the numbers of a verdict stand for, kept current by the policy enforcer.
#[derive(Debug, Default)]
pub struct FlowNames {
    /// Pod addresses (every node's) to `namespace/name`.
    pub pods: std::collections::HashMap<Ipv4Addr, String>,
    /// Endpoint ids (host veth ifindexes) to `namespace/name`.
    pub endpoints: std::collections::HashMap<u32, String>,
    /// Rule numbers to `namespace/policy direction[i]`.
    pub rules: std::collections::HashMap<u32, String>,
}

pub type SharedFlowNames = Arc<std::sync::RwLock<FlowNames>>;

/// One judged flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// When the agent read it (RFC 3339).
    pub time: String,
    pub node: String,
    /// `allowed`, `denied` (by policy), `spoofed` (sent from an address or MAC not the pod's)
    /// or `flow-table-full` (allowed, but the pod holds its whole share of remembered flows).
    pub verdict: String,
    /// `ingress` or `egress`, at `endpoint`.
    pub direction: String,
    /// The pod whose policy judged it (`namespace/name`), if known.
    pub endpoint: Option<String>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP` or the protocol number.
    pub protocol: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// The peer's security identity (or `ipBlock` class) as judged.
    pub peer_identity: u32,
    /// The rule that allowed it (`namespace/policy ingress[i]`), `node` for the node's own
    /// allowance; none when denied.
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    pub address: Ipv4Addr,
    pub port: u16,
    /// `namespace/name` when the address is a known pod's.
    pub pod: Option<String>,
}

/// The recent verdicts and a feed of new ones, shared by the reader and the server.
#[derive(Clone, Debug)]
pub struct FlowLog {
    recent: Arc<Mutex<VecDeque<FlowRecord>>>,
    live: broadcast::Sender<FlowRecord>,
    capacity: usize,
}

impl Default for FlowLog {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl FlowLog {
    /// Keeps the last `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            live: broadcast::channel(1024).0,
            capacity,
        }
    }

    pub fn push(&self, record: FlowRecord) {
        let mut recent = self.recent.lock().expect("flow log lock");
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(record.clone());
        // Nobody following: nothing to do.
        let _ = self.live.send(record);
    }

    /// The recent records, oldest first, and a feed of what comes after them.
    pub fn snapshot_and_follow(&self) -> (Vec<FlowRecord>, broadcast::Receiver<FlowRecord>) {
        let recent = self.recent.lock().expect("flow log lock");
        // Subscribed under the lock: no record falls between the snapshot and the feed.
        (recent.iter().cloned().collect(), self.live.subscribe())
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct FlowsQuery {
    #[serde(default)]
    follow: bool,
}

fn line(record: &FlowRecord) -> Result<String, Infallible> {
    let mut text = serde_json::to_string(record).expect("a record always serializes");
    text.push('\n');
    Ok(text)
}

pub(super) async fn handle(
    State(log): State<FlowLog>,
    Query(query): Query<FlowsQuery>,
) -> Response {
    let (recent, live) = log.snapshot_and_follow();
    let past = futures::stream::iter(recent.iter().map(line).collect::<Vec<_>>());
    let body = if query.follow {
        let future = tokio_stream::wrappers::BroadcastStream::new(live)
            // A follower too slow for the feed misses records rather than stalling the agent.
            .filter_map(|r| async move { r.ok() })
            .map(|r| line(&r));
        Body::from_stream(past.chain(future))
    } else {
        Body::from_stream(past)
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(port: u16) -> FlowRecord {
        FlowRecord {
            time: "2026-11-24T00:00:00Z".into(),
            node: "n1".into(),
            verdict: "denied".into(),
            direction: "ingress".into(),
            endpoint: Some("x/b".into()),
            protocol: "TCP".into(),
            source: FlowPeer {
                address: Ipv4Addr::new(10, 0, 0, 1),
                port,
                pod: Some("x/a".into()),
            },
            destination: FlowPeer {
                address: Ipv4Addr::new(10, 0, 0, 2),
                port: 80,
                pod: None,
            },
            peer_identity: 256,
            policy: None,
        }
    }

    #[test]
    fn the_log_keeps_the_newest_and_feeds_followers_what_comes_after() {
        let log = FlowLog::new(2);
        log.push(record(1));
        log.push(record(2));
        log.push(record(3));
        let (recent, mut live) = log.snapshot_and_follow();
        assert_eq!(
            recent.iter().map(|r| r.source.port).collect::<Vec<_>>(),
            [2, 3]
        );
        log.push(record(4));
        assert_eq!(live.try_recv().unwrap().source.port, 4);
        let json = serde_json::to_value(record(5)).unwrap();
        assert_eq!(json["peerIdentity"], 256);
        assert_eq!(json["source"]["pod"], "x/a");
    }
}
