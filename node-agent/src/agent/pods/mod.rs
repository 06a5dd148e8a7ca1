//! The node's pods: one [`worker::Worker`] per pod bound to this node, fed from the control
//! plane's `WatchPods` stream, and garbage collection of whatever belongs to pods that are gone
//! (containers, IP leases, sandboxes, files) — also after the agent was down while they were
//! deleted.

pub mod containers;
pub mod security;
pub mod status;
pub mod subpath;
pub mod worker;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use apiary_agent_api::v1::{WatchPodsRequest, object_event::Type};
use apiary_api::core_v1::Pod;
use apiary_runtime::ContainerState as RuntimeState;
use futures::StreamExt as _;
use tokio::{sync::watch, task::JoinHandle};

use self::containers::Labels;
use super::{context::Context, health::Check, volumes};

struct Handle {
    desired: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Keeps one worker per pod of this node.
pub struct PodManager {
    ctx: Arc<Context>,
    workers: HashMap<String, Handle>,
}

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager")
            .field("pods", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl PodManager {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            workers: HashMap::new(),
        }
    }

    /// Watches this node's pods for ever, re-watching after errors.
    pub async fn run(mut self) {
        loop {
            if let Err(e) = self.watch().await {
                tracing::warn!(error = %format!("{e:#}"), "pod watch ended; re-watching");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn watch(&mut self) -> anyhow::Result<()> {
        let mut stream = self
            .ctx
            .agent
            .clone()
            .watch_pods(WatchPodsRequest {
                node_name: self.ctx.node.name.clone(),
            })
            .await?
            .into_inner();
        // Pods of this listing; whatever runs here and is not among them is gone.
        let mut listed: Option<HashSet<String>> = Some(HashSet::new());
        let mut adopted = adoptable(&self.ctx);
        while let Some(event) = stream.next().await {
            let event = event?;
            let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
            if kind == Type::Synced {
                if let Some(seen) = listed.take() {
                    self.collect_garbage(&seen).await;
                    adopted.clear();
                    // Every listed pod has its worker (starting it is theirs to report).
                    self.ctx.health.pass(Check::Pods);
                }
                continue;
            }
            let pod: Pod = match serde_json::from_slice(&event.object_json) {
                Ok(pod) => pod,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable pod in the watch");
                    continue;
                }
            };
            let uid = pod.metadata.uid.clone();
            if let Some(seen) = &mut listed {
                seen.insert(uid.clone());
            }
            match kind {
                Type::Added | Type::Modified => {
                    let adopted = adopted.remove(&uid).unwrap_or_default();
                    self.update(pod, adopted);
                }
                Type::Deleted => {
                    if let Some(handle) = self.workers.get(&uid) {
                        handle.desired.send_replace(None);
                    } else {
                        // Deleted while no worker ran it (e.g. during an agent restart).
                        remove_pod_leftovers(&self.ctx, &uid).await;
                    }
                }
                _ => {}
            }
            self.workers.retain(|_, h| !h.task.is_finished());
        }
        Ok(())
    }

    fn update(&mut self, pod: Pod, adopted: Vec<RuntimeState>) {
        let uid = pod.metadata.uid.clone();
        if let Some(handle) = self.workers.get(&uid)
            && !handle.task.is_finished()
        {
            handle.desired.send_replace(Some(pod));
            return;
        }
        let (desired, rx) = watch::channel(Some(pod.clone()));
        let worker = worker::Worker::new(Arc::clone(&self.ctx), pod, rx, adopted);
        let task = tokio::spawn(worker.run());
        self.workers.insert(uid, Handle { desired, task });
    }

    /// Stops and removes what belongs to pods not in `live` (the node's pods right now).
    async fn collect_garbage(&mut self, live: &HashSet<String>) {
        for (uid, handle) in &self.workers {
            if !live.contains(uid) {
                handle.desired.send_replace(None);
            }
        }
        let mut orphans: HashSet<String> = HashSet::new();
        if let Ok(states) = self.ctx.runtime.list() {
            orphans.extend(
                states
                    .iter()
                    .filter_map(|s| Labels::pod_of(s).map(str::to_owned)),
            );
        }
        if let Ok(allocations) = self.ctx.network.allocations() {
            orphans.extend(allocations.into_iter().map(|(uid, _)| uid));
        }
        for dir in [&self.ctx.pods_dir, &self.ctx.sandboxes_dir] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                orphans.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        for uid in orphans {
            if !live.contains(&uid) && !self.workers.contains_key(&uid) {
                tracing::info!(pod_uid = %uid, "removing what a deleted pod left on the node");
                remove_pod_leftovers(&self.ctx, &uid).await;
            }
        }
    }
}

/// The runtime's containers by pod uid, for workers to adopt after an agent restart.
fn adoptable(ctx: &Context) -> HashMap<String, Vec<RuntimeState>> {
    let mut by_pod: HashMap<String, Vec<RuntimeState>> = HashMap::new();
    match ctx.runtime.list() {
        Ok(states) => {
            for state in states {
                if let Some(uid) = Labels::pod_of(&state) {
                    by_pod.entry(uid.to_owned()).or_default().push(state);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing containers"),
    }
    by_pod
}

/// Stops and removes every container of pod `uid`, releases its IP, and removes its sandbox,
/// volumes and files. Idempotent.
pub async fn remove_pod_leftovers(ctx: &Context, uid: &str) {
    if let Ok(states) = ctx.runtime.list() {
        for state in states.iter().filter(|s| Labels::pod_of(s) == Some(uid)) {
            if matches!(state.status, apiary_runtime::ContainerStatus::Running) {
                let _ = ctx.runtime.stop(&state.id, Duration::ZERO).await;
            }
            if let Err(e) = ctx.runtime.remove(&state.id).await {
                tracing::warn!(container = %state.id, error = %e, "removing a container");
            }
        }
    }
    if let Err(e) = ctx.network.teardown(uid).await {
        tracing::warn!(pod_uid = %uid, error = %e, "tearing down the pod network");
    }
    let sandbox = ctx.sandbox_dir(uid);
    let pod_dir = ctx.pod_dir(uid);
    // Claims' volumes are unpublished through their drivers first; one that cannot be keeps
    // the pod's directory (and is retried at the next cleanup of leftovers).
    if let Err(e) = volumes::csi::unpublish_all(ctx, &pod_dir).await {
        tracing::warn!(pod_uid = %uid, error = %e, "unpublishing CSI volumes");
    }
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let _ = apiary_runtime::Sandbox::remove(&sandbox);
        let _ = std::fs::remove_dir_all(&sandbox);
        // Subpath binds first: removing the files below must not reach into the volumes.
        subpath::unmount_all(&pod_dir);
        volumes::remove_all(&pod_dir)?;
        match std::fs::remove_dir_all(&pod_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
    .await;
    if let Ok(Err(e)) = result {
        tracing::warn!(pod_uid = %uid, error = %e, "removing pod files");
    }
}
