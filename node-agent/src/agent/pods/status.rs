//! A pod's status from what its worker knows, shaped as the kubelet reports it: phase,
//! conditions, and one status per container with its state, last state and restart count.

use std::collections::HashMap;

use apiary_api::{
    core_v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, Pod, PodIp, PodStatus,
    },
    meta::Condition,
};
use apiary_runtime::{ContainerState as RuntimeState, ContainerStatus as RuntimeStatus, ExitInfo};

/// One container as the worker sees it.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: Option<RuntimeState>,
    pub previous: Option<(RuntimeState, ExitInfo)>,
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
}

/// The pod as the worker sees it.
#[derive(Clone, Debug, Default)]
pub struct PodView {
    pub pod: Pod,
    pub host_ip: String,
    pub pod_ip: Option<String>,
    pub start_time: String,
    pub sandbox_ready: bool,
    pub blocked: Option<(String, String)>,
    pub terminal: Option<&'static str>,
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn terminated(state: &RuntimeState, info: &ExitInfo) -> ContainerStateTerminated {
    let reason = if info.oom_killed {
        "OOMKilled"
    } else if info.message.is_some() && state.started_at.is_none() {
        "StartError"
    } else if info.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerStateTerminated {
        exit_code: info.exit_code,
        signal: info.signal.unwrap_or_default(),
        reason: reason.to_owned(),
        message: info.message.clone().unwrap_or_default(),
        started_at: state.started_at.map(time),
        finished_at: Some(time(info.finished_at)),
        container_id: container_id(&state.id),
    }
}

fn container_status(view: &ContainerView, phase_terminal: bool) -> ContainerStatus {
    let waiting = |reason: &str, message: &str| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: reason.to_owned(),
            message: message.to_owned(),
        }),
        ..Default::default()
    };
    let current = match (&view.state, &view.waiting) {
        (Some(s), _) if matches!(s.status, RuntimeStatus::Running) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: s.started_at.map(time),
            }),
            ..Default::default()
        },
        // A restart is pending: show why it waits, and the finished attempt as lastState.
        (_, Some((reason, message))) if !phase_terminal => waiting(reason, message),
        (Some(s), _) => match &s.status {
            RuntimeStatus::Exited(info) => ContainerState {
                terminated: Some(terminated(s, info)),
                ..Default::default()
            },
            RuntimeStatus::Running => unreachable!("matched above"),
        },
        (None, _) => waiting("ContainerCreating", ""),
    };
    let restarting = current.waiting.is_some() && view.state.is_some();
    let last_state = if restarting {
        // The attempt that just ended is the last state while the next one waits.
        view.state.as_ref().and_then(|s| match &s.status {
            RuntimeStatus::Exited(info) => Some(ContainerState {
                terminated: Some(terminated(s, info)),
                ..Default::default()
            }),
            RuntimeStatus::Running => None,
        })
    } else {
        view.previous.as_ref().map(|(s, info)| ContainerState {
            terminated: Some(terminated(s, info)),
            ..Default::default()
        })
    };
    ContainerStatus {
        name: view.name.clone(),
        state: Some(current),
        last_state: Some(last_state.unwrap_or_default()),
        ready: view.ready,
        restart_count: i32::try_from(view.restart_count).unwrap_or(i32::MAX),
        image: view.image.clone(),
        image_id: view.image_id.clone(),
        container_id: view
            .container_id
            .as_ref()
            .map(|id| container_id(id))
            .unwrap_or_default(),
        started: Some(view.started),
    }
}

/// A runtime container id as a status names it (`<runtime>://<id>`, as the kubelet's).
pub fn container_id(id: &str) -> String {
    format!("apiary://{id}")
}

/// The stored status's conditions as (status, lastTransitionTime) by type: where [`compute`]
/// starts from, so that a condition that has not changed keeps its transition time across
/// agent restarts (as the kubelet's status manager keeps the API's).
pub fn transitions_of(status: Option<&PodStatus>) -> HashMap<String, (String, String)> {
    status
        .into_iter()
        .flat_map(|s| &s.conditions)
        .filter_map(|c| {
            let time = c.last_transition_time.clone()?;
            Some((c.type_.clone(), (c.status.clone(), time)))
        })
        .collect()
}

/// The status to report. `transitions` keeps each condition's (status, lastTransitionTime)
/// between calls.
pub fn compute(view: &PodView, transitions: &mut HashMap<String, (String, String)>) -> PodStatus {
    let init_done = view.init.iter().all(|c| {
        matches!(&c.state, Some(RuntimeState { status: RuntimeStatus::Exited(info), .. }) if info.exit_code == 0)
    });
    let init_statuses: Vec<ContainerStatus> = view
        .init
        .iter()
        .map(|c| container_status(c, view.terminal.is_some()))
        .collect();
    let statuses: Vec<ContainerStatus> = view
        .containers
        .iter()
        .map(|c| container_status(c, view.terminal.is_some()))
        .collect();
    let phase = match view.terminal {
        Some(p) => p,
        None if !init_done => "Pending",
        None => {
            let any_started = view.containers.iter().any(|c| c.state.is_some());
            if any_started { "Running" } else { "Pending" }
        }
    };
    let all_ready = !view.containers.is_empty() && view.containers.iter().all(|c| c.ready);
    let containers_ready = all_ready && view.terminal.is_none();
    let mut conditions = Vec::new();
    let mut condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" }.to_owned();
        let entry = transitions
            .entry(type_.to_owned())
            .or_insert_with(|| (status.clone(), now()));
        if entry.0 != status {
            *entry = (status.clone(), now());
        }
        conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            last_transition_time: Some(entry.1.clone()),
            last_probe_time: None,
            reason: if ok { String::new() } else { reason.to_owned() },
            message: if ok { String::new() } else { message },
            ..Default::default()
        });
    };
    condition(
        "PodReadyToStartContainers",
        view.sandbox_ready,
        "",
        String::new(),
    );
    let pending_init: Vec<&str> = view
        .init
        .iter()
        .filter(|c| !matches!(&c.state, Some(RuntimeState { status: RuntimeStatus::Exited(i), .. }) if i.exit_code == 0))
        .map(|c| c.name.as_str())
        .collect();
    condition(
        "Initialized",
        init_done,
        "ContainersNotInitialized",
        format!(
            "containers with incomplete status: [{}]",
            pending_init.join(" ")
        ),
    );
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let reason = if view.terminal.is_some() {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let message = format!("containers with unready status: [{}]", unready.join(" "));
    condition("Ready", containers_ready, reason, message.clone());
    condition("ContainersReady", containers_ready, reason, message);
    // PodScheduled belongs to the scheduler: keep what it wrote.
    if let Some(scheduled) = view
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "PodScheduled"))
    {
        conditions.push(scheduled.clone());
    }
    let (reason, message) = view.blocked.clone().unwrap_or_default();
    PodStatus {
        phase: phase.to_owned(),
        conditions,
        message,
        reason: if view.blocked.is_some() {
            String::new()
        } else {
            reason
        },
        host_ip: view.host_ip.clone(),
        host_ips: vec![PodIp {
            ip: view.host_ip.clone(),
        }],
        pod_ip: view.pod_ip.clone().unwrap_or_default(),
        pod_ips: view
            .pod_ip
            .iter()
            .map(|ip| PodIp { ip: ip.clone() })
            .collect(),
        start_time: Some(view.start_time.clone()),
        init_container_statuses: init_statuses,
        container_statuses: statuses,
        qos_class: qos_class(&view.pod).to_owned(),
        ..Default::default()
    }
}

/// Kubernetes' QoS classes: Guaranteed when every container's cpu and memory limits equal its
/// requests, BestEffort when none sets any, Burstable otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let containers: Vec<_> = pod
        .spec
        .init_containers
        .iter()
        .chain(&pod.spec.containers)
        .collect();
    let any = containers.iter().any(|c| {
        c.resources
            .as_ref()
            .is_some_and(|r| !r.limits.is_empty() || !r.requests.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let Some(r) = &c.resources else { return false };
        ["cpu", "memory"].iter().all(|k| {
            let limit = r.limits.get(*k);
            let request = r.requests.get(*k).or(limit);
            limit.is_some() && limit.map(|l| l.as_str()) == request.map(|q| q.as_str())
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn running(id: &str) -> RuntimeState {
        RuntimeState {
            id: id.into(),
            labels: Default::default(),
            pid: Some(1),
            status: RuntimeStatus::Running,
            started_at: Some(chrono::Utc::now()),
            log_path: PathBuf::new(),
        }
    }

    fn exited(id: &str, code: i32) -> RuntimeState {
        RuntimeState {
            status: RuntimeStatus::Exited(ExitInfo {
                exit_code: code,
                signal: None,
                oom_killed: false,
                finished_at: chrono::Utc::now(),
                message: None,
            }),
            ..running(id)
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            host_ip: "192.0.2.1".into(),
            pod_ip: Some("10.244.0.5".into()),
            start_time: now(),
            sandbox_ready: true,
            containers,
            ..Default::default()
        }
    }

    /// One container, `web`, running and ready.
    fn ready_web() -> PodView {
        view(vec![ContainerView {
            name: "web".into(),
            state: Some(running("a")),
            ready: true,
            started: true,
            ..Default::default()
        }])
    }

    #[test]
    fn running_and_ready_containers_make_a_ready_pod() {
        let v = ready_web();
        let status = compute(&v, &mut HashMap::new());
        assert_eq!(status.phase, "Running");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert!(
            status.container_statuses[0]
                .state
                .as_ref()
                .unwrap()
                .running
                .is_some()
        );
        assert_eq!(status.pod_ip, "10.244.0.5");
    }

    #[test]
    fn a_condition_that_did_not_change_keeps_the_stored_transition_time() {
        let v = ready_web();
        let time = |status: &PodStatus, type_: &str| {
            let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
            (c.status.clone(), c.last_transition_time.clone().unwrap())
        };
        // What an earlier agent reported, every condition as of `then`, with ContainersReady
        // False: it has changed since, the others have not.
        let mut stored = compute(&v, &mut HashMap::new());
        let then = "2020-01-01T00:00:00Z".to_owned();
        for c in &mut stored.conditions {
            c.last_transition_time = Some(then.clone());
        }
        stored
            .conditions
            .iter_mut()
            .find(|c| c.type_ == "ContainersReady")
            .unwrap()
            .status = "False".into();
        let mut transitions = transitions_of(Some(&stored));
        let again = compute(&v, &mut transitions);
        assert_eq!(time(&again, "Ready"), ("True".into(), then.clone()));
        let (status, changed) = time(&again, "ContainersReady");
        assert_eq!(status, "True");
        assert_ne!(
            changed, then,
            "a condition that changed has a new transition time"
        );
        assert!(transitions_of(None).is_empty());
    }

    #[test]
    fn a_crash_loop_shows_waiting_with_the_last_termination() {
        let v = view(vec![ContainerView {
            name: "web".into(),
            state: Some(exited("a", 2)),
            waiting: Some(("CrashLoopBackOff".into(), "back-off 10s".into())),
            restart_count: 1,
            ..Default::default()
        }]);
        let status = compute(&v, &mut HashMap::new());
        let c = &status.container_statuses[0];
        assert_eq!(
            c.state.as_ref().unwrap().waiting.as_ref().unwrap().reason,
            "CrashLoopBackOff"
        );
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_str()), (2, "Error"));
        assert_eq!(c.restart_count, 1);
        assert_eq!(status.phase, "Running");
    }

    #[test]
    fn terminal_pods_show_terminated_containers_and_are_not_ready() {
        let mut v = view(vec![ContainerView {
            name: "job".into(),
            state: Some(exited("a", 0)),
            ..Default::default()
        }]);
        v.terminal = Some("Succeeded");
        let status = compute(&v, &mut HashMap::new());
        assert_eq!(status.phase, "Succeeded");
        let t = status.container_statuses[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_eq!(t.reason, "Completed");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PodCompleted")
        );
    }

    #[test]
    fn pending_init_containers_keep_the_pod_pending() {
        let mut v = view(vec![ContainerView {
            name: "web".into(),
            ..Default::default()
        }]);
        v.init = vec![ContainerView {
            name: "setup".into(),
            state: Some(running("i")),
            ..Default::default()
        }];
        let status = compute(&v, &mut HashMap::new());
        assert_eq!(status.phase, "Pending");
        let init = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap();
        assert_eq!(init.message, "containers with incomplete status: [setup]");
    }

    #[test]
    fn qos_classes() {
        use apiary_api::core_v1::{Container, ResourceRequirements};
        let mut pod = Pod::default();
        pod.spec.containers = vec![Container::default()];
        assert_eq!(qos_class(&pod), "BestEffort");
        let mut r = ResourceRequirements::default();
        r.limits.insert("cpu".into(), "1".parse().unwrap());
        r.limits.insert("memory".into(), "1Gi".parse().unwrap());
        pod.spec.containers[0].resources = Some(r.clone());
        assert_eq!(qos_class(&pod), "Guaranteed");
        r.requests.insert("cpu".into(), "500m".parse().unwrap());
        pod.spec.containers[0].resources = Some(r);
        assert_eq!(qos_class(&pod), "Burstable");
    }
}
