//! The agent's health, as the kubelet's `/healthz` (localhost:10248): ok once the data plane is
//! attached and the first sync of each stream the node acts on is done. The same judgement is
//! the node's Ready condition, which the heartbeats post.
//!
//! Checks only ever pass: a watch that ends and lists again later keeps the node's programs and
//! pods as they were meanwhile, so a re-list does not make the node unready. For the same reason
//! an agent that restarts on a node whose pods and data plane outlived the previous one (pinned
//! programs and maps) keeps the node Ready while it syncs, for up to [`RESUME_GRACE`]: posting
//! NotReady would have the node lifecycle controller mark every pod of the node not ready (out
//! of its Services) and taint it `not-ready:NoExecute`, for pods that never stopped serving. A
//! kubelet that restarts does not post NotReady either.

use std::{
    collections::BTreeSet,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::{net::TcpListener, sync::watch};

/// The kubelet's healthz port.
pub const DEFAULT_PORT: u16 = 10248;

/// How long a restarted agent that found its node's data plane still attached may take to
/// sync before pending checks make the node NotReady (within Kubernetes' default 40 s node
/// monitor grace period).
pub const RESUME_GRACE: Duration = Duration::from_secs(30);

/// What has to be done before the node is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// The pod network is set up: BPF programs loaded and attached (underlay, socket
    /// load-balancing), cluster DNS answering.
    Dataplane,
    /// Routes to the other nodes' pod CIDRs, from the first listing of the nodes.
    Nodes,
    /// The service maps, from the first listing of Services and EndpointSlices.
    Services,
    /// The policy maps, from the first listing of policies, namespaces, pods and identities.
    Policies,
    /// This node's pods, from their first listing.
    Pods,
}

impl Check {
    /// Every check, in the order they are reported.
    pub const ALL: [Self; 5] = [
        Self::Dataplane,
        Self::Nodes,
        Self::Services,
        Self::Policies,
        Self::Pods,
    ];

    /// The check's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dataplane => "dataplane",
            Self::Nodes => "nodes",
            Self::Services => "services",
            Self::Policies => "policies",
            Self::Pods => "pods",
        }
    }

    /// What is still missing while the check has not passed.
    fn pending(self) -> &'static str {
        match self {
            Self::Dataplane => "the data plane is not attached yet",
            Self::Nodes => "routes to the other nodes are not synced yet",
            Self::Services => "the service maps are not synced yet",
            Self::Policies => "the policy maps are not synced yet",
            Self::Pods => "this node's pods are not synced yet",
        }
    }
}

/// The checks that passed; shared by everything that passes one, the healthz server and the
/// heartbeats (which are woken when it changes).
#[derive(Clone, Debug)]
pub struct Health {
    passed: Arc<watch::Sender<BTreeSet<Check>>>,
    /// Until when pending checks leave the node Ready (see [`Health::resuming`]).
    resume_until: Arc<OnceLock<Instant>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            passed: Arc::new(watch::Sender::new(BTreeSet::new())),
            resume_until: Arc::new(OnceLock::new()),
        }
    }
}

impl Health {
    /// The previous agent's data plane is still attached and serving the node's pods: pending
    /// checks leave the node Ready for `grace` from now.
    pub fn resuming(&self, grace: Duration) {
        let _ = self.resume_until.set(Instant::now() + grace);
    }

    /// Marks `check` as passed (once; later calls change nothing).
    pub fn pass(&self, check: Check) {
        self.passed.send_if_modified(|passed| {
            let added = passed.insert(check);
            if added && passed.len() == Check::ALL.len() {
                tracing::info!("healthy: the data plane is attached and the first sync is done");
            }
            added
        });
    }

    /// Whether every check passed.
    pub fn is_ok(&self) -> bool {
        self.passed.borrow().len() == Check::ALL.len()
    }

    /// Wakes when a check passes.
    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<Check>> {
        self.passed.subscribe()
    }

    /// What the node still waits for, as one line: `None` when healthy.
    pub fn waiting_for(&self) -> Option<String> {
        let passed = self.passed.borrow();
        let pending: Vec<&str> = Check::ALL
            .iter()
            .filter(|c| !passed.contains(c))
            .map(|c| c.pending())
            .collect();
        (!pending.is_empty()).then(|| pending.join("; "))
    }

    /// The node's Ready condition: (ready, reason, message), as the kubelet words it.
    pub fn ready_condition(&self) -> (bool, &'static str, String) {
        self.ready_condition_at(Instant::now())
    }

    /// What a heartbeat posts of the Ready condition: all of it, except while a node that was
    /// not resuming is still starting. Its registration said so already, and should the agent
    /// fail to start, its last word (why it stopped) must not be overwritten by a heartbeat that
    /// was on its way saying it is starting.
    pub fn condition_to_post(&self) -> Option<(bool, &'static str, String)> {
        let (ready, reason, message) = self.ready_condition();
        (ready || self.resume_until.get().is_some()).then_some((ready, reason, message))
    }

    fn ready_condition_at(&self, now: Instant) -> (bool, &'static str, String) {
        match self.waiting_for() {
            None => (
                true,
                "KubeletReady",
                "apiary node agent is posting ready status".to_owned(),
            ),
            Some(waiting) if self.resume_until.get().is_some_and(|until| now < *until) => (
                true,
                "KubeletReady",
                format!(
                    "apiary node agent is posting ready status (restarted: the node's pods and \
                     data plane kept running while it syncs: {waiting})"
                ),
            ),
            Some(waiting) => (
                false,
                "KubeletNotReady",
                format!("the node agent is starting: {waiting}"),
            ),
        }
    }

    /// The healthz answer: `ok`, or Kubernetes' verbose form naming each check.
    pub fn report(&self) -> (StatusCode, String) {
        if self.is_ok() {
            return (StatusCode::OK, "ok".to_owned());
        }
        let passed = self.passed.borrow();
        let mut text = String::new();
        for check in Check::ALL {
            if passed.contains(&check) {
                text.push_str(&format!("[+]{} ok\n", check.name()));
            } else {
                text.push_str(&format!(
                    "[-]{} failed: {}\n",
                    check.name(),
                    check.pending()
                ));
            }
        }
        text.push_str("healthz check failed\n");
        (StatusCode::INTERNAL_SERVER_ERROR, text)
    }
}

/// Serves `GET /healthz` on `listener` until the process ends: plain HTTP, as the kubelet's (it
/// tells nothing but health, and listens on localhost).
pub async fn serve(listener: TcpListener, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(health);
    axum::serve(listener, app).await
}

async fn healthz(State(health): State<Health>) -> (StatusCode, String) {
    health.report()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_once_every_check_passed() {
        let health = Health::default();
        let (ready, reason, message) = health.ready_condition();
        assert!(!ready);
        assert_eq!(reason, "KubeletNotReady");
        assert!(
            message.contains("the data plane is not attached yet"),
            "{message}"
        );
        for check in &Check::ALL[..4] {
            health.pass(*check);
        }
        let (code, text) = health.report();
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            text,
            "[+]dataplane ok\n[+]nodes ok\n[+]services ok\n[+]policies ok\n\
             [-]pods failed: this node's pods are not synced yet\nhealthz check failed\n"
        );
        assert!(!health.is_ok());
        health.pass(Check::Pods);
        health.pass(Check::Pods);
        assert!(health.is_ok());
        assert_eq!(health.report(), (StatusCode::OK, "ok".to_owned()));
        assert!(health.ready_condition().0);
    }

    #[test]
    fn a_resuming_node_stays_ready_while_it_syncs_within_the_grace_only() {
        let health = Health::default();
        health.resuming(Duration::from_secs(30));
        let now = Instant::now();
        let (ready, reason, message) = health.ready_condition_at(now);
        assert!(ready, "{message}");
        assert_eq!(reason, "KubeletReady");
        assert!(
            message.contains("data plane is not attached yet"),
            "{message}"
        );
        // Still syncing once the grace is over: NotReady.
        let (ready, reason, _) = health.ready_condition_at(now + Duration::from_secs(31));
        assert!(!ready);
        assert_eq!(reason, "KubeletNotReady");
        // A second call does not extend it.
        health.resuming(Duration::from_secs(3600));
        assert!(!health.ready_condition_at(now + Duration::from_secs(31)).0);
        for check in Check::ALL {
            health.pass(check);
        }
        assert!(health.ready_condition_at(now + Duration::from_secs(31)).0);
    }

    #[test]
    fn heartbeats_of_a_starting_node_post_no_condition_until_it_is_ready() {
        let fresh = Health::default();
        assert_eq!(fresh.condition_to_post(), None);
        for check in Check::ALL {
            fresh.pass(check);
        }
        assert!(fresh.condition_to_post().is_some_and(|(ready, _, _)| ready));
        // A resuming node posts what it says (Ready within the grace, NotReady after it).
        let resuming = Health::default();
        resuming.resuming(Duration::ZERO);
        assert!(
            resuming
                .condition_to_post()
                .is_some_and(|(ready, _, _)| !ready)
        );
    }
}
