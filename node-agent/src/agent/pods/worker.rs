//! One pod's reconciler: drives the pod's sandbox, network, volumes and containers towards its
//! spec, restarts containers as its `restartPolicy` says (with the kubelet's back-off), runs its
//! probes, terminates it gracefully, and reports its status.
//!
//! Everything it decides comes from the spec and from what the runtime reports now, so a worker
//! started after an agent restart picks up where the last one stopped.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use apiary_api::core_v1::{Container, LifecycleHandler, Pod, PodStatus};
use apiary_runtime::{ContainerState as RuntimeState, ContainerStatus as RuntimeStatus, ExitInfo};
use tokio::sync::{Notify, watch};

use super::{
    containers::{self, Labels},
    status::{self, ContainerView, PodView},
};
use crate::{
    agent::{
        context::{Context, PodEntry},
        env::{self, PodFacts, Sources},
        probes::{self, Kind, Verdict},
        tokens,
        volumes::{self, PreparedVolume},
    },
    api_client::PodRef,
};

/// How often a worker looks at its containers when nothing else wakes it.
const POLL: Duration = Duration::from_secs(1);
/// ConfigMap, Secret, downward API and projected volumes are refreshed this often (their
/// tokens are asked for again only when due, see [`tokens`]).
const REFRESH: Duration = Duration::from_secs(30);
/// The kubelet's crash-loop back-off: 10 s doubling to 5 min, forgotten after 10 min of running.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// One container of the pod as the worker tracks it.
#[derive(Debug, Default)]
struct Track {
    init: bool,
    /// Attempts started so far; the current attempt is `attempts - 1`.
    attempts: u32,
    /// Runtime id of the latest attempt.
    current: Option<String>,
    /// What the runtime last said about the latest attempt.
    state: Option<RuntimeState>,
    /// The attempt before the latest, once it finished (`lastState`).
    previous: Option<(RuntimeState, ExitInfo)>,
    /// Why the container is not running, when it is waiting.
    waiting: Option<(String, String)>,
    backoff_until: Option<Instant>,
    backoff_count: u32,
    image_id: String,
    probes: Option<Probers>,
    /// Set when a liveness or startup probe failed and the container was killed for it.
    killed_by_probe: bool,
}

#[derive(Debug)]
struct Probers {
    startup: Option<watch::Receiver<Verdict>>,
    readiness: Option<watch::Receiver<Verdict>>,
    liveness: Option<watch::Receiver<Verdict>>,
}

impl Track {
    fn running(&self) -> bool {
        matches!(
            self.state,
            Some(RuntimeState {
                status: RuntimeStatus::Running,
                ..
            })
        )
    }

    fn exit(&self) -> Option<&ExitInfo> {
        match &self.state {
            Some(RuntimeState {
                status: RuntimeStatus::Exited(info),
                ..
            }) => Some(info),
            _ => None,
        }
    }

    fn started(&self) -> bool {
        self.running()
            && self
                .probes
                .as_ref()
                .and_then(|p| p.startup.as_ref())
                .is_none_or(|v| *v.borrow() == Verdict::Success)
    }

    fn ready(&self) -> bool {
        self.started()
            && self
                .probes
                .as_ref()
                .and_then(|p| p.readiness.as_ref())
                .is_none_or(|v| *v.borrow() == Verdict::Success)
    }
}

pub struct Worker {
    ctx: Arc<Context>,
    uid: String,
    pod: Pod,
    desired: watch::Receiver<Option<Pod>>,
    wake: Arc<Notify>,
    tracks: BTreeMap<String, Track>,
    ip: Option<Ipv4Addr>,
    namespaces: Option<apiary_runtime::SandboxNamespaces>,
    sources: Option<(Instant, Sources)>,
    volumes: BTreeMap<String, PreparedVolume>,
    /// Set once every container has finished for good: the pod is Succeeded or Failed.
    terminal: Option<&'static str>,
    /// Why the sandbox or the volumes are not ready, as (reason, message).
    blocked: Option<(String, String)>,
    start_time: String,
    /// When this worker first saw the pod, and whether its start latency is still to be
    /// recorded (not for pods adopted after an agent restart: their start is long past).
    seen: Instant,
    start_pending: bool,
    last_report: Option<PodStatus>,
    /// Conditions' last transition times, kept while their status does not change.
    transitions: HashMap<String, (String, String)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for `pod`, adopting the containers the runtime already runs for it.
    pub fn new(
        ctx: Arc<Context>,
        pod: Pod,
        desired: watch::Receiver<Option<Pod>>,
        adopted: Vec<RuntimeState>,
    ) -> Self {
        let uid = pod.metadata.uid.clone();
        let start_pending = adopted.is_empty();
        let mut tracks: BTreeMap<String, Track> = BTreeMap::new();
        for c in &pod.spec.init_containers {
            tracks.entry(c.name.clone()).or_default().init = true;
        }
        for c in &pod.spec.containers {
            tracks.entry(c.name.clone()).or_default();
        }
        // Newest attempt of each container becomes current, the one before it `previous`.
        let mut adopted = adopted;
        adopted.sort_by_key(Labels::attempt_of);
        for state in adopted {
            let Some(name) = Labels::container_of(&state) else {
                continue;
            };
            let Some(track) = tracks.get_mut(&name) else {
                continue;
            };
            let attempt = Labels::attempt_of(&state);
            if let Some(old) = track.state.take()
                && let RuntimeStatus::Exited(info) = old.status.clone()
            {
                track.previous = Some((old, info));
            }
            track.attempts = attempt + 1;
            track.current = Some(state.id.clone());
            track.state = Some(state);
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(status::now);
        // A pod reported finished stays finished: a restarted agent must not give it a
        // sandbox and an address again.
        let terminal = match pod.status.as_ref().map(|s| s.phase.as_str()) {
            Some("Succeeded") => Some("Succeeded"),
            Some("Failed") => Some("Failed"),
            _ => None,
        };
        let ip = terminal
            .and(pod.status.as_ref())
            .and_then(|s| s.pod_ip.parse().ok());
        let transitions = status::transitions_of(pod.status.as_ref());
        Self {
            ctx,
            uid,
            pod,
            desired,
            wake: Arc::new(Notify::new()),
            tracks,
            ip,
            namespaces: None,
            sources: None,
            volumes: BTreeMap::new(),
            terminal,
            blocked: None,
            start_time,
            seen: Instant::now(),
            start_pending,
            last_report: None,
            transitions,
        }
    }

    fn pod_ref(&self, container: Option<&str>) -> PodRef {
        PodRef {
            namespace: self.pod.metadata.namespace.clone(),
            name: self.pod.metadata.name.clone(),
            uid: self.uid.clone(),
            field_path: container
                .map(|c| {
                    let kind = if self.tracks.get(c).is_some_and(|t| t.init) {
                        "initContainers"
                    } else {
                        "containers"
                    };
                    format!("spec.{kind}{{{c}}}")
                })
                .unwrap_or_default(),
        }
    }

    fn event(&self, container: Option<&str>, type_: &str, reason: &str, message: String) {
        self.ctx.api.pod_event(
            &self.ctx.node.name,
            &self.pod_ref(container),
            type_,
            reason,
            message,
        );
    }

    /// Runs until the pod is deleted and everything it held on the node is released.
    pub async fn run(mut self) {
        loop {
            let desired = self.desired.borrow_and_update().clone();
            let Some(pod) = desired else {
                // Gone from the API (deleted with no grace, or force-deleted): stop with the
                // grace period of the last spec seen.
                let grace = grace_of(&self.pod);
                self.terminate(grace).await;
                self.cleanup().await;
                return;
            };
            self.pod = pod;
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .map_or_else(|| grace_of(&self.pod), secs);
                self.terminate(grace).await;
                self.report().await;
                self.finish_deletion().await;
                self.cleanup().await;
                return;
            }
            let next = self.sync().await;
            self.publish();
            self.report().await;
            let wake = Arc::clone(&self.wake);
            tokio::select! {
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        // The manager is gone (agent shutting down): leave the pod running.
                        return;
                    }
                }
                () = tokio::time::sleep(next) => {}
                () = wake.notified() => {}
            }
        }
    }

    /// One pass towards the spec; returns how soon to look again.
    async fn sync(&mut self) -> Duration {
        if self.terminal.is_some() {
            return Duration::from_secs(3600);
        }
        if let Err((reason, message)) = self.ensure_sandbox().await {
            if self.blocked.as_ref().map(|b| &b.1) != Some(&message) {
                self.event(None, "Warning", &reason, message.clone());
            }
            self.blocked = Some((reason, message));
            return Duration::from_secs(2);
        }
        if let Err((reason, message)) = self.ensure_volumes().await {
            if self.blocked.as_ref().map(|b| &b.1) != Some(&message) {
                self.event(None, "Warning", &reason, message.clone());
            }
            self.blocked = Some((reason, message));
            return Duration::from_secs(2);
        }
        self.blocked = None;
        self.refresh_states().await;
        let mut next = POLL;
        let restart_policy = restart_policy(&self.pod);
        // Init containers, one after another, each to success.
        let inits: Vec<Container> = self.pod.spec.init_containers.clone();
        for c in &inits {
            let track = &self.tracks[&c.name];
            if track.running() {
                return next;
            }
            match track.exit().map(|e| e.exit_code) {
                Some(0) => continue,
                Some(_) if restart_policy == "Never" => {
                    self.finish("Failed").await;
                    return next;
                }
                Some(_) | None => {
                    if let Some(wait) = self.start_when_due(c, true).await {
                        next = next.min(wait);
                    }
                    return next;
                }
            }
        }
        // Then every app container.
        let apps: Vec<Container> = self.pod.spec.containers.clone();
        for c in &apps {
            let track = self.tracks.get_mut(&c.name).expect("tracked");
            if track.running() && track.probes.is_none() {
                // Adopted after an agent restart (or started before the pod had its
                // address): its probes run again from here.
                self.start_probes(c);
            }
            let track = self.tracks.get_mut(&c.name).expect("tracked");
            if track.running() {
                if let Some((kind, message)) = probe_failure(track) {
                    track.killed_by_probe = true;
                    let id = track.current.clone().unwrap_or_default();
                    self.event(
                        Some(&c.name),
                        "Warning",
                        "Unhealthy",
                        format!("{} probe failed: {message}", kind.name()),
                    );
                    let reason = format!("failed {} probe", kind.name().to_lowercase());
                    self.event(
                        Some(&c.name),
                        "Normal",
                        "Killing",
                        format!("Container {} {reason}, will be restarted", c.name),
                    );
                    let grace = grace_of(&self.pod);
                    if let Err(e) = self.ctx.runtime.stop(&id, grace).await {
                        tracing::warn!(pod = %self.pod.metadata.name, error = %e, "stopping a container");
                    }
                    next = Duration::ZERO;
                }
                continue;
            }
            let restart = match track.exit() {
                None => true,
                Some(info) => match restart_policy {
                    "Always" => true,
                    "OnFailure" => info.exit_code != 0 || track.killed_by_probe,
                    _ => false,
                },
            };
            if restart && let Some(wait) = self.start_when_due(c, false).await {
                next = next.min(wait);
            }
        }
        // Every container finished for good: the pod is done.
        let all_done = apps.iter().all(|c| {
            let t = &self.tracks[&c.name];
            let code = t.exit().map(|e| e.exit_code);
            match (restart_policy, code) {
                (_, None) => false,
                ("Never", Some(_)) => true,
                ("OnFailure", Some(0)) => !t.killed_by_probe,
                _ => false,
            }
        });
        if all_done && !apps.is_empty() {
            let failed = apps.iter().any(|c| {
                self.tracks[&c.name]
                    .exit()
                    .is_some_and(|e| e.exit_code != 0)
            });
            self.finish(if failed { "Failed" } else { "Succeeded" })
                .await;
        }
        next
    }

    /// The pod will run no more containers: release its network and sandbox now (the status
    /// keeps its IP, as Kubernetes does).
    async fn finish(&mut self, phase: &'static str) {
        self.terminal = Some(phase);
        self.stop_probes();
        self.release_network().await;
    }

    async fn ensure_sandbox(&mut self) -> Result<(), (String, String)> {
        if self.namespaces.is_some() && self.ip.is_some() {
            return Ok(());
        }
        let failed = |e: String| ("FailedCreatePodSandBox".to_owned(), e);
        let dir = self.ctx.sandbox_dir(&self.uid);
        let hostname = containers::hostname(&self.pod);
        let host = containers::HostNamespaces::of(&self.pod);
        let host_network = host.network;
        let created = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || containers::ensure_sandbox(&dir, &hostname, host)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(format!("Failed to create pod sandbox: {e:#}")))?;
        if host_network {
            self.ip = Some(self.ctx.node.ip);
        } else {
            let request = crate::network::PodRequest {
                uid: self.uid.clone(),
                namespace: self.pod.metadata.namespace.clone(),
                name: self.pod.metadata.name.clone(),
                netns: created.net.clone(),
            };
            let interface = self.ctx.network.setup(&request).await.map_err(|e| {
                failed(format!(
                    "Failed to create pod sandbox: setting up the pod network: {}",
                    error_chain(&e)
                ))
            })?;
            self.ip = Some(interface.ip);
        }
        containers::write_etc_files(
            &self.ctx.pod_dir(&self.uid),
            &self.pod,
            self.ip.expect("set above"),
            &self.ctx.dns,
        )
        .map_err(|e| failed(format!("writing /etc files: {e}")))?;
        self.namespaces = Some(created);
        Ok(())
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: self.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host_ip: self.ctx.node.ip.to_string(),
            node_name: self.ctx.node.name.clone(),
        }
    }

    async fn ensure_volumes(&mut self) -> Result<(), (String, String)> {
        let stale = self
            .sources
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= REFRESH);
        if !stale {
            return Ok(());
        }
        let previous_tokens = self
            .sources
            .as_ref()
            .map(|(_, s)| s.tokens.clone())
            .unwrap_or_default();
        let sources = fetch_sources(&self.ctx, &self.pod, &previous_tokens)
            .await
            .map_err(|e| ("FailedMount".to_owned(), format!("{e:#}")))?;
        let pod = self.pod.clone();
        let dir = self.ctx.pod_dir(&self.uid);
        let facts = self.facts();
        let alloc = self.ctx.node.allocatable();
        let prepared = {
            let sources = sources.clone();
            tokio::task::spawn_blocking(move || {
                volumes::prepare(&pod, &dir, &facts, &sources, &alloc)
            })
            .await
            .map_err(|e| ("FailedMount".to_owned(), e.to_string()))?
        }
        .map_err(|e| {
            (
                "FailedMount".to_owned(),
                format!("MountVolume.SetUp failed for {e}"),
            )
        })?;
        let mut prepared = prepared;
        for volume in &self.pod.spec.volumes {
            if volumes::csi::claim_of(&self.pod, volume).is_none() {
                continue;
            }
            let dir = self.ctx.pod_dir(&self.uid);
            let published = volumes::csi::publish(&self.ctx, &self.pod, &dir, volume)
                .await
                .map_err(|e| {
                    (
                        "FailedMount".to_owned(),
                        format!(
                            "MountVolume.SetUp failed for volume \"{}\" : {e}",
                            volume.name
                        ),
                    )
                })?;
            prepared.insert(volume.name.clone(), published);
        }
        self.volumes = prepared;
        self.sources = Some((Instant::now(), sources));
        Ok(())
    }

    /// Reads each current attempt's state from the runtime and notices exits.
    async fn refresh_states(&mut self) {
        let names: Vec<String> = self.tracks.keys().cloned().collect();
        for name in names {
            let track = self.tracks.get_mut(&name).expect("tracked");
            let Some(id) = track.current.clone() else {
                continue;
            };
            let was_running = track.running();
            match self.ctx.runtime.state(&id) {
                Ok(Some(state)) => track.state = Some(state),
                Ok(None) => {
                    // Removed behind our back (e.g. by hand): start over.
                    track.current = None;
                    track.state = None;
                }
                Err(e) => tracing::warn!(container = %id, error = %e, "reading container state"),
            }
            if was_running && !track.running() {
                track.probes = None;
            }
        }
    }

    /// Starts `c` now unless it is backing off; returns how long until it is due otherwise.
    /// Like the kubelet: the first restart is immediate, then 10 s, 20 s, 40 s … up to 5 min.
    async fn start_when_due(&mut self, c: &Container, init: bool) -> Option<Duration> {
        let pod_name = format!(
            "{}_{}({})",
            self.pod.metadata.name, self.pod.metadata.namespace, self.uid
        );
        let track = self.tracks.get_mut(&c.name).expect("tracked");
        let now = Instant::now();
        if let Some(until) = track.backoff_until {
            if until > now {
                if let Some((reason, _)) = &mut track.waiting
                    && reason == "ErrImagePull"
                {
                    *reason = "ImagePullBackOff".to_owned();
                }
                return Some(until - now);
            }
            track.backoff_until = None;
            if track.attempts > 0 {
                track.backoff_count += 1;
            }
        } else if track.attempts > 0 {
            let ran_long = track.state.as_ref().is_some_and(|s| {
                s.started_at.is_some_and(|at| {
                    chrono::Utc::now()
                        .signed_duration_since(at)
                        .to_std()
                        .unwrap_or_default()
                        >= BACKOFF_RESET
                })
            });
            if ran_long {
                track.backoff_count = 0;
            }
            if track.backoff_count > 0 {
                let delay = backoff_delay(track.backoff_count - 1);
                track.backoff_until = Some(now + delay);
                track.waiting = Some((
                    "CrashLoopBackOff".to_owned(),
                    format!(
                        "back-off {}s restarting failed container={} pod={pod_name}",
                        delay.as_secs(),
                        c.name
                    ),
                ));
                self.event(
                    Some(&c.name),
                    "Warning",
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {pod_name}",
                        c.name
                    ),
                );
                return Some(delay);
            }
            track.backoff_count = 1;
        }
        self.start(c, init).await;
        None
    }

    /// Pulls the image if needed and starts a new attempt of `c`.
    async fn start(&mut self, c: &Container, init: bool) {
        let Some(namespaces) = self.namespaces.clone() else {
            return;
        };
        let image = match containers::ensure_image(&self.ctx, c, |reason, message, warning| {
            self.event(
                Some(&c.name),
                if warning { "Warning" } else { "Normal" },
                reason,
                message,
            );
        })
        .await
        {
            Ok(image) => image,
            Err((reason, message)) => {
                let track = self.tracks.get_mut(&c.name).expect("tracked");
                track.waiting = Some((reason, message));
                // Image errors back off like crashes do (ImagePullBackOff).
                track.backoff_until = Some(Instant::now() + BACKOFF_INITIAL);
                return;
            }
        };
        let sources = self
            .sources
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let track_attempt = self.tracks[&c.name].attempts;
        let env = match env::container_env(
            &self.pod,
            c,
            &self.facts(),
            &sources,
            &image.config.env,
            &self.ctx.node.allocatable(),
        ) {
            Ok(env) => env,
            Err(e) => {
                let track = self.tracks.get_mut(&c.name).expect("tracked");
                if track.waiting.as_ref().map(|w| &w.1) != Some(&e.to_string()) {
                    self.event(Some(&c.name), "Warning", "Failed", format!("Error: {e}"));
                }
                let track = self.tracks.get_mut(&c.name).expect("tracked");
                track.waiting = Some(("CreateContainerConfigError".to_owned(), e.to_string()));
                return;
            }
        };
        let spec = containers::spec(containers::SpecInput {
            ctx: &self.ctx,
            pod: &self.pod,
            container: c,
            init,
            attempt: track_attempt,
            image: &image,
            env,
            namespaces: &namespaces,
            volumes: &self.volumes,
        });
        let spec = match spec {
            Ok(spec) => spec,
            Err(message) => {
                let track = self.tracks.get_mut(&c.name).expect("tracked");
                track.waiting = Some(("CreateContainerConfigError".to_owned(), message));
                return;
            }
        };
        // Older attempts than the previous one are not needed any more (logs included).
        let track = self.tracks.get_mut(&c.name).expect("tracked");
        if let Some((old, _)) = &track.previous {
            let old_id = old.id.clone();
            let _ = self.ctx.runtime.remove(&old_id).await;
            let _ = std::fs::remove_file(&old.log_path);
        }
        let track = self.tracks.get_mut(&c.name).expect("tracked");
        if let Some(state) = track.state.take()
            && let RuntimeStatus::Exited(info) = state.status.clone()
        {
            track.previous = Some((state, info));
        }
        track.attempts = track_attempt + 1;
        track.current = Some(spec.id.clone());
        track.image_id = image.digest.clone();
        track.killed_by_probe = false;
        track.waiting = None;
        match self.ctx.runtime.start(&spec).await {
            Ok(state) => {
                let running = matches!(state.status, RuntimeStatus::Running);
                let start_error = match &state.status {
                    RuntimeStatus::Exited(info) if info.message.is_some() => info.message.clone(),
                    _ => None,
                };
                let track = self.tracks.get_mut(&c.name).expect("tracked");
                track.state = Some(state);
                if let Some(message) = start_error {
                    self.event(
                        Some(&c.name),
                        "Warning",
                        "Failed",
                        format!("Error: {message}"),
                    );
                } else {
                    self.event(
                        Some(&c.name),
                        "Normal",
                        "Created",
                        format!("Created container {}", c.name),
                    );
                    self.event(
                        Some(&c.name),
                        "Normal",
                        "Started",
                        format!("Started container {}", c.name),
                    );
                }
                if running && !init {
                    self.start_probes(c);
                }
            }
            Err(e) => {
                let message = error_chain(&e);
                self.event(
                    Some(&c.name),
                    "Warning",
                    "Failed",
                    format!("Error: {message}"),
                );
                let track = self.tracks.get_mut(&c.name).expect("tracked");
                track.current = None;
                track.attempts = track_attempt;
                track.waiting = Some(("CreateContainerError".to_owned(), message));
                track.backoff_until = Some(Instant::now() + BACKOFF_INITIAL);
            }
        }
    }

    fn start_probes(&mut self, c: &Container) {
        let Some(ip) = self.ip else { return };
        let track = self.tracks.get_mut(&c.name).expect("tracked");
        let Some(id) = track.current.clone() else {
            return;
        };
        let target = probes::Target {
            pod_ip: ip,
            container: c.clone(),
            container_id: id,
            exec: Arc::new(containers::RuntimeExec(self.ctx.runtime.clone())),
        };
        // What the API holds of this very container (adopted after an agent restart): a
        // container it says had started is not probed for its start again, and one it says
        // was ready stays ready until its readiness probe fails, instead of every pod of the
        // node going not ready, and out of its Services, while the agent restarts.
        let reported = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.iter().find(|s| s.name == c.name))
            .filter(|s| s.container_id == status::container_id(&target.container_id));
        let started = reported.is_some_and(|s| s.started == Some(true));
        let ready = reported.is_some_and(|s| s.ready);
        let spawn = |kind: Kind, probe: &Option<apiary_api::core_v1::Probe>| {
            let probe = probe.clone()?;
            if kind == Kind::Startup && started {
                return None;
            }
            let initial = if kind == Kind::Readiness && ready {
                Verdict::Success
            } else {
                Verdict::Unknown
            };
            let (tx, rx) = watch::channel(initial);
            let wake = Arc::clone(&self.wake);
            let mut watch_rx = rx.clone();
            // Wake the worker whenever a verdict changes.
            tokio::spawn(async move {
                while watch_rx.changed().await.is_ok() {
                    wake.notify_one();
                }
            });
            tokio::spawn(probes::run(kind, probe, target.clone(), tx));
            Some(rx)
        };
        let startup = spawn(Kind::Startup, &c.startup_probe);
        let readiness = spawn(Kind::Readiness, &c.readiness_probe);
        let liveness = spawn(Kind::Liveness, &c.liveness_probe);
        let track = self.tracks.get_mut(&c.name).expect("tracked");
        track.probes = Some(Probers {
            startup,
            readiness,
            liveness,
        });
    }

    fn stop_probes(&mut self) {
        for track in self.tracks.values_mut() {
            track.probes = None;
        }
    }

    /// Stops every running container: preStop hooks first, then SIGTERM, then SIGKILL once the
    /// grace period is over.
    async fn terminate(&mut self, grace: Duration) {
        self.stop_probes();
        let deadline = Instant::now() + grace;
        let mut stops = Vec::new();
        for (name, track) in &self.tracks {
            let Some(id) = track.current.clone() else {
                continue;
            };
            let running = matches!(
                self.ctx.runtime.state(&id),
                Ok(Some(RuntimeState {
                    status: RuntimeStatus::Running,
                    ..
                }))
            );
            if !running {
                continue;
            }
            self.event(
                Some(name),
                "Normal",
                "Killing",
                format!("Stopping container {name}"),
            );
            let pre_stop = self
                .pod
                .spec
                .containers
                .iter()
                .find(|c| c.name == *name)
                .and_then(|c| Some((c.lifecycle.as_ref()?.pre_stop.clone()?, c.clone())));
            let ctx = Arc::clone(&self.ctx);
            let ip = self.ip;
            stops.push(async move {
                if let Some((hook, container)) = pre_stop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = tokio::time::timeout(left, run_hook(&ctx, &id, &hook, &container, ip))
                        .await;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = ctx.runtime.stop(&id, left).await {
                    tracing::warn!(container = %id, error = %e, "stopping");
                }
            });
        }
        futures::future::join_all(stops).await;
        self.refresh_states().await;
    }

    /// Finishes a graceful deletion: containers are stopped, so the API object can go.
    async fn finish_deletion(&self) {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            self.pod.metadata.namespace, self.pod.metadata.name
        );
        let options = serde_json::json!({
            "apiVersion": "v1", "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": { "uid": self.uid },
        });
        if let Err(e) = self.ctx.api.delete(&path, &options).await {
            tracing::warn!(pod = %self.pod.metadata.name, error = %format!("{e:#}"), "finishing the deletion");
        }
    }

    async fn release_network(&mut self) {
        if !self.pod.spec.host_network
            && let Err(e) = self.ctx.network.teardown(&self.uid).await
        {
            tracing::warn!(pod = %self.pod.metadata.name, error = %error_chain(&e), "tearing down the pod network");
        }
        let dir = self.ctx.sandbox_dir(&self.uid);
        let _ = tokio::task::spawn_blocking(move || apiary_runtime::Sandbox::remove(&dir)).await;
        self.namespaces = None;
    }

    /// Releases everything the pod held on the node.
    async fn cleanup(&mut self) {
        self.ctx.registry.remove(
            &self.pod.metadata.namespace,
            &self.pod.metadata.name,
            &self.uid,
        );
        super::remove_pod_leftovers(&self.ctx, &self.uid).await;
    }

    /// Publishes the pod's containers for logs and exec.
    fn publish(&self) {
        let entry = PodEntry {
            uid: self.uid.clone(),
            containers: self
                .tracks
                .iter()
                .filter_map(|(name, t)| {
                    Some((
                        name.clone(),
                        (t.current.clone()?, t.attempts.saturating_sub(1)),
                    ))
                })
                .collect(),
            names: self
                .pod
                .spec
                .init_containers
                .iter()
                .chain(&self.pod.spec.containers)
                .map(|c| c.name.clone())
                .collect(),
            start_time: self.start_time.clone(),
        };
        self.ctx
            .registry
            .set(&self.pod.metadata.namespace, &self.pod.metadata.name, entry);
    }

    fn view(&self) -> PodView {
        let container_view = |c: &Container| {
            let t = &self.tracks[&c.name];
            ContainerView {
                name: c.name.clone(),
                image: c.image.clone(),
                image_id: t.image_id.clone(),
                container_id: t.current.clone(),
                state: t.state.clone(),
                previous: t.previous.clone(),
                waiting: t.waiting.clone(),
                ready: t.ready(),
                started: t.started(),
                restart_count: t.attempts.saturating_sub(1),
            }
        };
        PodView {
            pod: self.pod.clone(),
            host_ip: self.ctx.node.ip.to_string(),
            pod_ip: self.ip.map(|ip| ip.to_string()),
            start_time: self.start_time.clone(),
            sandbox_ready: self.namespaces.is_some() || self.terminal.is_some(),
            blocked: self.blocked.clone(),
            terminal: self.terminal,
            init: self
                .pod
                .spec
                .init_containers
                .iter()
                .map(container_view)
                .collect(),
            containers: self
                .pod
                .spec
                .containers
                .iter()
                .map(container_view)
                .collect(),
        }
    }

    /// Sends the pod's status if it changed since the last report.
    async fn report(&mut self) {
        let mut status = status::compute(&self.view(), &mut self.transitions);
        if self.start_pending
            && !status.container_statuses.is_empty()
            && status
                .container_statuses
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        {
            self.start_pending = false;
            crate::metrics::AgentMetrics::global().pod_started(self.seen.elapsed());
        }
        if let Some(ip) = self.pod.status.as_ref().map(|s| s.pod_ip.clone())
            && status.pod_ip.is_empty()
            && !ip.is_empty()
        {
            status.pod_ip = ip;
        }
        // Someone else may have written the stored status since (the node lifecycle controller
        // marks the pods of an unreachable node not ready): report again when its readiness
        // differs from ours.
        let stored_ready = self.pod.status.as_ref().and_then(ready_of);
        if self.last_report.as_ref() == Some(&status) && stored_ready == ready_of(&status) {
            return;
        }
        let report = apiary_agent_api::v1::PodStatusReport {
            namespace: self.pod.metadata.namespace.clone(),
            name: self.pod.metadata.name.clone(),
            uid: self.uid.clone(),
            status_json: serde_json::to_vec(&status).expect("a status always serializes"),
        };
        match self.ctx.agent.clone().report_pod_status(report).await {
            Ok(_) => self.last_report = Some(status),
            Err(e) => {
                tracing::debug!(pod = %self.pod.metadata.name, error = %e, "reporting status")
            }
        }
    }
}

/// The status of a pod status's Ready condition, if it has one.
fn ready_of(status: &PodStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// Runs a lifecycle hook (preStop or postStart).
async fn run_hook(
    ctx: &Context,
    container_id: &str,
    hook: &LifecycleHandler,
    container: &Container,
    ip: Option<Ipv4Addr>,
) {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(secs(sleep.seconds)).await;
    } else if let Some(exec) = &hook.exec {
        use probes::Exec as _;
        let _ = containers::RuntimeExec(ctx.runtime.clone())
            .exec(container_id, &exec.command)
            .await;
    } else if let Some(http) = &hook.http_get
        && let Some(ip) = ip
    {
        let target = probes::Target {
            pod_ip: ip,
            container: container.clone(),
            container_id: container_id.to_owned(),
            exec: Arc::new(containers::RuntimeExec(ctx.runtime.clone())),
        };
        let _ = probes::http_get(http, &target).await;
    }
}

/// Which probe says a running container must be restarted, and its message.
fn probe_failure(track: &Track) -> Option<(Kind, String)> {
    let probers = track.probes.as_ref()?;
    for (kind, rx) in [
        (Kind::Startup, &probers.startup),
        (Kind::Liveness, &probers.liveness),
    ] {
        if let Some(rx) = rx
            && let Verdict::Failure(message) = &*rx.borrow()
        {
            return Some((kind, message.clone()));
        }
    }
    None
}

fn restart_policy(pod: &Pod) -> &'static str {
    match pod.spec.restart_policy.as_str() {
        "Never" => "Never",
        "OnFailure" => "OnFailure",
        _ => "Always",
    }
}

fn backoff_delay(step: u32) -> Duration {
    BACKOFF_INITIAL
        .saturating_mul(1u32.checked_shl(step.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX)
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// `terminationGracePeriodSeconds`, 30 s by default.
pub fn grace_of(pod: &Pod) -> Duration {
    secs(pod.spec.termination_grace_period_seconds.unwrap_or(30))
}

/// The ConfigMaps and Secrets the pod references, as they are now, and the ServiceAccount
/// tokens of its projected volumes (`previous` ones kept until they are due for renewal).
async fn fetch_sources(
    ctx: &Context,
    pod: &Pod,
    previous: &BTreeMap<tokens::TokenKey, tokens::IssuedToken>,
) -> anyhow::Result<Sources> {
    let (config_maps, secrets) = env::referenced(pod);
    let ns = &pod.metadata.namespace;
    let tokens = tokens::refresh(pod, previous, std::time::SystemTime::now(), |path, body| {
        let api = ctx.api.clone();
        async move { api.post(&path, &body).await }
    })
    .await?;
    Ok(Sources {
        config_maps: fetch_all(ctx, ns, "configmaps", config_maps).await?,
        secrets: fetch_all(ctx, ns, "secrets", secrets).await?,
        services: fetch_linked_services(ctx, pod).await?,
        tokens,
    })
}

/// The Services whose variables the pod's containers get ([`env::linked_services`]).
async fn fetch_linked_services(
    ctx: &Context,
    pod: &Pod,
) -> anyhow::Result<Vec<apiary_api::core_v1::Service>> {
    use crate::api_client::Found;
    let ns = &pod.metadata.namespace;
    let own = if pod.spec.enable_service_links == Some(false) {
        Vec::new()
    } else {
        match ctx
            .api
            .get::<serde_json::Value>(&format!("/api/v1/namespaces/{ns}/services"))
            .await?
        {
            Found::Object(list) => serde_json::from_value(list["items"].clone())?,
            Found::Missing => Vec::new(),
        }
    };
    let master = match ctx
        .api
        .get(&format!(
            "/api/v1/namespaces/default/services/{MASTER_SERVICE}"
        ))
        .await?
    {
        Found::Object(service) => Some(service),
        Found::Missing => None,
    };
    Ok(env::linked_services(pod, own, master))
}

/// The API server's own Service, whose variables every container gets.
const MASTER_SERVICE: &str = "kubernetes";

/// Each named object of `plural` in namespace `ns`; `None` for those that do not exist.
async fn fetch_all<T: serde::de::DeserializeOwned>(
    ctx: &Context,
    ns: &str,
    plural: &str,
    names: std::collections::BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Option<T>>> {
    use crate::api_client::Found;
    let mut found = BTreeMap::new();
    for name in names {
        let object = match ctx
            .api
            .get(&format!("/api/v1/namespaces/{ns}/{plural}/{name}"))
            .await?
        {
            Found::Object(object) => Some(object),
            Found::Missing => None,
        };
        found.insert(name, object);
    }
    Ok(found)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_five_minutes() {
        let delays: Vec<u64> = (0..7).map(|s| backoff_delay(s).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
    }
}
