use std::process::Command;

use super::*;
use crate::metrics::{AgentMetrics, RcodeLabels};

fn answered(rcode: &str) -> u64 {
    AgentMetrics::global()
        .dns_queries
        .get_or_create(&RcodeLabels {
            rcode: rcode.into(),
        })
        .get()
}

fn process(pid: i32, start_time: u64) -> ProcessId {
    ProcessId { pid, start_time }
}

/// The agent's counter goes up by what is new, whether the same process reports again, a
/// restarted agent meets a process that counted before it, or the process was replaced.
#[test]
fn reported_counts_are_added_once_and_stay_monotonic() {
    // An rcode of its own: other tests count into the same process-wide metrics.
    let rcode = "TEST_MONOTONIC";
    let totals = |n: u64| BTreeMap::from([(rcode.to_owned(), n)]);
    let start = answered(rcode);
    let mut seen = CountsSeen::default();
    seen.switch_to(process(10, 1));
    // What the process counted before this agent came is counted once.
    seen.add(totals(5));
    assert_eq!(answered(rcode) - start, 5);
    seen.add(totals(5));
    seen.add(totals(8));
    assert_eq!(answered(rcode) - start, 8);
    // A new connection to the same process: only what is new.
    seen.switch_to(process(10, 1));
    seen.add(totals(9));
    assert_eq!(answered(rcode) - start, 9);
    // A new process counts from zero: its counts are all new.
    seen.switch_to(process(11, 7));
    seen.add(totals(2));
    assert_eq!(answered(rcode) - start, 11);
}

/// `stop` kills the process its pid file names, and removes its files.
#[tokio::test]
async fn stop_kills_the_process_of_the_pid_file() {
    let run_dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(run_dir.path());
    std::fs::create_dir_all(&layout.dir).unwrap();
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let id = ProcessId::of(child.id() as i32).unwrap();
    std::fs::write(layout.pid_file(), serde_json::to_vec(&id).unwrap()).unwrap();
    std::fs::write(layout.socket(), "").unwrap();
    // Reaped here, as the agent's runtime (or init) would: `alive` sees zombies as gone anyway.
    let reaper = std::thread::spawn(move || child.wait().unwrap());
    let problems = stop(&layout, None).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!reaper.join().unwrap().success());
    assert!(!id.alive());
    assert!(!layout.pid_file().exists());
    assert!(!layout.socket().exists());
}

/// A pid file whose pid now belongs to another process (another start time) kills nothing.
#[tokio::test]
async fn stop_spares_a_process_that_reused_the_pid() {
    let run_dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(run_dir.path());
    std::fs::create_dir_all(&layout.dir).unwrap();
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let id = ProcessId::of(child.id() as i32).unwrap();
    let recycled = process(id.pid, id.start_time + 1);
    std::fs::write(layout.pid_file(), serde_json::to_vec(&recycled).unwrap()).unwrap();
    let problems = stop(&layout, None).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(id.alive());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// With nothing listening, connecting fails (the agent then starts a process).
#[tokio::test]
async fn connecting_without_a_process_fails() {
    let run_dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::with_executable(
        DnsArgs {
            run_dir: run_dir.path().to_owned(),
            cgroup_parent: None,
            config: crate::dns::DnsConfig {
                listen: vec![(std::net::Ipv4Addr::LOCALHOST, 0).into()],
                upstreams: Vec::new(),
                clients: Vec::new(),
                cluster_domain: crate::dns::DEFAULT_DOMAIN.into(),
            },
        },
        "/nonexistent".into(),
    );
    assert!(matches!(supervisor.connect().await, Err(Error::Connect(_))));
    // And starting a process that cannot be executed says so.
    assert!(matches!(
        supervisor.connect_or_start().await,
        Err(Error::Spawn(_))
    ));
}
