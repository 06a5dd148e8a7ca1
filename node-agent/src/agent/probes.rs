//! Liveness, readiness and startup probes: one task per probe of a running container, reporting
//! the probe's verdict after `successThreshold` / `failureThreshold` consecutive results, the
//! way the kubelet's prober does.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use apiary_api::{
    core_v1::{Container, HttpGetAction, Probe},
    intstr::IntOrString,
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::watch};

/// Runs a command inside a container for exec probes and hooks.
#[async_trait::async_trait]
pub trait Exec: Send + Sync {
    /// The command's exit code and (truncated) output.
    async fn exec(&self, container_id: &str, command: &[String]) -> Result<(i32, String), String>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Readiness => "Readiness",
            Self::Liveness => "Liveness",
        }
    }
}

/// A probe's verdict so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet (initial delay, or thresholds not reached).
    Unknown,
    Success,
    Failure(String),
}

/// What a probe runs against.
#[derive(Clone)]
pub struct Target {
    pub pod_ip: Ipv4Addr,
    pub container: Container,
    pub container_id: String,
    pub exec: Arc<dyn Exec>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("pod_ip", &self.pod_ip)
            .field("container_id", &self.container_id)
            .finish_non_exhaustive()
    }
}

/// Probes until the receiver is dropped (the container stopped) or, for a startup probe,
/// until it succeeds once.
pub async fn run(kind: Kind, probe: Probe, target: Target, verdict: watch::Sender<Verdict>) {
    let period = Duration::from_secs(positive(probe.period_seconds, 10));
    let timeout = Duration::from_secs(positive(probe.timeout_seconds, 1));
    let success_threshold = positive(probe.success_threshold, 1);
    let failure_threshold = positive(probe.failure_threshold, 3);
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(probe.initial_delay_seconds).unwrap_or(0),
    ))
    .await;
    let (mut successes, mut failures) = (0u64, 0u64);
    loop {
        if verdict.is_closed() {
            return;
        }
        let result = match tokio::time::timeout(timeout, check(&probe, &target)).await {
            Ok(r) => r,
            Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
        };
        crate::metrics::AgentMetrics::global().probed(kind.name(), result.is_ok());
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if successes >= success_threshold {
                    verdict.send_if_modified(|v| set(v, Verdict::Success));
                    if kind == Kind::Startup {
                        return;
                    }
                }
            }
            Err(message) => {
                failures += 1;
                successes = 0;
                if failures >= failure_threshold {
                    verdict.send_if_modified(|v| set(v, Verdict::Failure(message)));
                    // A failed liveness or startup probe gets the container restarted: the
                    // next attempt gets a new prober.
                    if kind != Kind::Readiness {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn set(slot: &mut Verdict, new: Verdict) -> bool {
    if *slot == new {
        return false;
    }
    *slot = new;
    true
}

fn positive(value: i32, default: u64) -> u64 {
    u64::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// One check: `Ok` on success, the reason otherwise (as the kubelet words it).
pub async fn check(probe: &Probe, target: &Target) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let (code, output) = target
            .exec
            .exec(&target.container_id, &exec.command)
            .await?;
        return if code == 0 {
            Ok(())
        } else {
            Err(format!(
                "command {:?} exited with {code}: {}",
                exec.command.join(" "),
                output.trim()
            ))
        };
    }
    if let Some(http) = &probe.http_get {
        return http_get(http, target).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, &target.container)?;
        let host = if tcp.host.is_empty() {
            target.pod_ip.to_string()
        } else {
            tcp.host.clone()
        };
        return TcpStream::connect((host.as_str(), port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    Err("the probe has no handler (exec, httpGet or tcpSocket)".to_owned())
}

/// A named port is looked up among the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .find(|p| p.name == *name)
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("port {name:?} not found in the container's ports")),
    }
}

/// A minimal HTTP/1.1 GET: status 200–399 is success. Hand-written rather than a client crate
/// because probes need exactly one request per connection and nothing else.
pub async fn http_get(action: &HttpGetAction, target: &Target) -> Result<(), String> {
    use tokio::io::AsyncReadExt as _;
    if action.scheme.eq_ignore_ascii_case("https") {
        return Err("HTTPS probes are not supported by this node".to_owned());
    }
    let port = resolve_port(&action.port, &target.container)?;
    let host = if action.host.is_empty() {
        target.pod_ip.to_string()
    } else {
        action.host.clone()
    };
    let path = if action.path.is_empty() {
        "/"
    } else {
        &action.path
    };
    let url = format!("http://{host}:{port}{path}");
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for header in &action.http_headers {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = vec![0u8; 256];
    let mut read = 0;
    while read < 12 {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::core_v1::{ContainerPort, TcpSocketAction};
    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    struct NoExec;
    #[async_trait::async_trait]
    impl Exec for NoExec {
        async fn exec(&self, _: &str, command: &[String]) -> Result<(i32, String), String> {
            Ok((i32::from(command[0] != "true"), String::new()))
        }
    }

    fn target() -> Target {
        Target {
            pod_ip: Ipv4Addr::LOCALHOST,
            container: Container {
                ports: vec![ContainerPort {
                    name: "http".into(),
                    container_port: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            container_id: "c".into(),
            exec: Arc::new(NoExec),
        }
    }

    async fn http_server(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_judge_by_status_code() {
        let ok = http_server("204 No Content").await;
        let bad = http_server("503 Service Unavailable").await;
        let action = |port: i32| HttpGetAction {
            path: "/healthz".into(),
            port: IntOrString::Int(port),
            ..Default::default()
        };
        assert_eq!(http_get(&action(i32::from(ok)), &target()).await, Ok(()));
        assert_eq!(
            http_get(&action(i32::from(bad)), &target()).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }

    #[tokio::test]
    async fn thresholds_decide_the_verdict() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Probe {
            tcp_socket: Some(TcpSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: String::new(),
            }),
            period_seconds: 1,
            failure_threshold: 2,
            ..Default::default()
        };
        let (tx, mut rx) = watch::channel(Verdict::Unknown);
        let task = tokio::spawn(run(Kind::Readiness, probe, target(), tx));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Verdict::Success);
        drop(listener);
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(*rx.borrow(), Verdict::Failure(ref m) if m.contains("dial tcp")));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn exec_probes_and_named_ports() {
        let probe = |cmd: &str| Probe {
            exec: Some(apiary_api::core_v1::ExecAction {
                command: vec![cmd.into()],
            }),
            ..Default::default()
        };
        assert_eq!(check(&probe("true"), &target()).await, Ok(()));
        assert!(check(&probe("false"), &target()).await.is_err());
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &target().container),
            Ok(1)
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &target().container).is_err());
    }
}
