//! The reachability matrix of Kubernetes' e2e NetworkPolicy tests, probed for real on a lab
//! cluster: namespaces x, y and z, pods a, b and c in each (labels `ns: <ns>` and `pod: <pod>`),
//! every pod serving TCP ports 80 and 81 (named `serve-80-tcp` and `serve-81-tcp`). A probe round
//! connects from every pod to every pod on both ports, through `kubectl exec`, and gives a
//! [`Truth`] table to compare with what a case expects.
//!
//! Manifests quote `'y'`: YAML 1.1, which kubectl reads, takes a bare `y` for `true`.

use std::{
    collections::BTreeMap,
    fmt,
    net::Ipv4Addr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cluster::ClusterLab;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
const IMAGE: &str = "localhost/busybox:latest";
/// How long one probe waits for a connection: lab round trips are microseconds, so a second
/// means dropped.
const PROBE_SECONDS: u32 = 1;

/// One pod of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub ns: &'static str,
    pub pod: &'static str,
}

impl Peer {
    /// Whether this is the pod named `ns/pod`.
    pub fn is(self, name: &str) -> bool {
        name.split_once('/') == Some((self.ns, self.pod))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

/// The nine pods, x/a first.
pub fn peers() -> Vec<Peer> {
    NAMESPACES
        .iter()
        .flat_map(|&ns| PODS.iter().map(move |&pod| Peer { ns, pod }))
        .collect()
}

/// Whether each (from, to, port) connection got through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth(BTreeMap<(Peer, Peer, u16), bool>);

impl Truth {
    /// What `allowed` says of every cell, except that a pod always reaches itself: its own
    /// address is local to its namespace and never crosses its veth (as upstream's
    /// `AllowLoopback`).
    pub fn expected(allowed: impl Fn(Peer, Peer, u16) -> bool) -> Self {
        let mut cells = BTreeMap::new();
        for from in peers() {
            for to in peers() {
                for port in PORTS {
                    cells.insert((from, to, port), from == to || allowed(from, to, port));
                }
            }
        }
        Self(cells)
    }

    /// The cells where `self` and `other` disagree.
    pub fn differences(&self, other: &Truth) -> usize {
        self.0
            .iter()
            .filter(|(cell, allowed)| other.0.get(cell) != Some(allowed))
            .count()
    }

    /// Both tables side by side, port by port, upstream's way (`.` reached, `X` not), with the
    /// disagreeing cells of `observed` marked `!`.
    pub fn compare(&self, observed: &Truth) -> String {
        let mut out = String::new();
        for port in PORTS {
            out.push_str(&format!("port {port}: expected, then observed\n"));
            let header: String = peers().iter().map(|p| format!(" {p}")).collect();
            out.push_str(&format!("    {header}    {header}\n"));
            for from in peers() {
                let row = |table: &Truth, mark: bool| -> String {
                    peers()
                        .iter()
                        .map(|&to| {
                            let cell = table.0.get(&(from, to, port)).copied();
                            let differs = mark && cell != self.0.get(&(from, to, port)).copied();
                            let c = match cell {
                                Some(true) => '.',
                                Some(false) => 'X',
                                None => '?',
                            };
                            format!("  {c}{} ", if differs { '!' } else { ' ' })
                        })
                        .collect()
                };
                out.push_str(&format!(
                    "{from} {}  {from} {}\n",
                    row(self, false),
                    row(observed, true)
                ));
            }
        }
        out
    }
}

/// The matrix's pods, running.
#[derive(Debug)]
pub struct Matrix {
    ips: BTreeMap<Peer, Ipv4Addr>,
}

impl Matrix {
    /// Creates the namespaces and pods (spread over the cluster's nodes, so that some pairs
    /// share a node and some do not) and waits until all are Ready.
    pub fn create(cluster: &ClusterLab) -> anyhow::Result<Self> {
        let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();
        let mut manifest = String::new();
        for ns in NAMESPACES {
            manifest.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: '{ns}', labels: {{ns: '{ns}'}}}}\n---\n"
            ));
        }
        for (i, peer) in peers().into_iter().enumerate() {
            manifest.push_str(&pod_manifest(peer, &nodes[i % nodes.len()]));
            manifest.push_str("---\n");
        }
        cluster.apply(&manifest)?;
        let mut ips = BTreeMap::new();
        for peer in peers() {
            let pod = cluster.wait_ready(peer.ns, peer.pod, Duration::from_secs(90))?;
            let ip = pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .with_context(|| format!("{peer} has no podIP"))?;
            ips.insert(peer, ip);
        }
        Ok(Self { ips })
    }

    pub fn ip(&self, peer: &str) -> Ipv4Addr {
        *self
            .ips
            .iter()
            .find(|(p, _)| p.is(peer))
            .unwrap_or_else(|| panic!("no pod {peer} in the matrix"))
            .1
    }

    /// `template` with every `{ip:NS/POD}` replaced by that pod's address.
    pub fn render(&self, template: &str) -> String {
        let mut out = template.to_owned();
        for peer in self.ips.keys() {
            out = out.replace(
                &format!("{{ip:{peer}}}"),
                &self.ip(&peer.to_string()).to_string(),
            );
        }
        assert!(!out.contains("{ip:"), "unknown pod in a placeholder: {out}");
        out
    }

    /// One round: every pod connects to every pod on both ports, all at once.
    pub fn probe(&self, cluster: &ClusterLab) -> anyhow::Result<Truth> {
        let targets: Vec<(Ipv4Addr, u16)> = self
            .ips
            .values()
            .flat_map(|&ip| PORTS.map(|port| (ip, port)))
            .collect();
        let children: Vec<(Peer, Child)> = self
            .ips
            .keys()
            .map(|&from| Ok((from, spawn_probes(cluster, from, &targets)?)))
            .collect::<anyhow::Result<_>>()?;
        let mut cells = BTreeMap::new();
        for (from, child) in children {
            let reached = collect_probes(from, child, &targets)?;
            for (&to, &ip) in &self.ips {
                for port in PORTS {
                    cells.insert((from, to, port), reached[&(ip, port)]);
                }
            }
        }
        Ok(Truth(cells))
    }

    /// Whether `from` connects to each of `targets` (one try each, in parallel).
    pub fn reaches(
        &self,
        cluster: &ClusterLab,
        from: &str,
        targets: &[(Ipv4Addr, u16)],
    ) -> anyhow::Result<Vec<bool>> {
        let from = *self
            .ips
            .keys()
            .find(|p| p.is(from))
            .with_context(|| format!("no pod {from} in the matrix"))?;
        let reached = collect_probes(from, spawn_probes(cluster, from, targets)?, targets)?;
        Ok(targets.iter().map(|t| reached[t]).collect())
    }

    /// Probes until a round matches `expected`, for at most `timeout`; the error shows both
    /// tables of the last round.
    pub fn settle(
        &self,
        cluster: &ClusterLab,
        expected: &Truth,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            match self.probe(cluster) {
                Ok(observed) if observed == *expected => return Ok(rounds),
                Ok(observed) if started.elapsed() > timeout => bail!(
                    "{} cells differ after {rounds} rounds ({:.1} s):\n{}",
                    expected.differences(&observed),
                    started.elapsed().as_secs_f64(),
                    expected.compare(&observed)
                ),
                Err(e) if started.elapsed() > timeout => return Err(e),
                _ => {}
            }
        }
    }
}

fn pod_manifest(peer: Peer, node: &str) -> String {
    let Peer { ns, pod } = peer;
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: '{ns}', labels: {{pod: {pod}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www && echo {ns}/{pod} > /www/index.html && httpd -p 80 -h /www && httpd -p 81 -h /www && exec sleep 1000000"]
    ports:
    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}
"#
    )
}

/// Connects to every target at once from inside `from`, each under `timeout`, and prints
/// `IP:PORT 1` for a connection made, `IP:PORT 0` otherwise.
const PROBE_SCRIPT: &str = r#"for t in "$@"; do ( if timeout "$PROBE_SECONDS" nc "${t%:*}" "${t#*:}" </dev/null >/dev/null 2>&1; then echo "$t 1"; else echo "$t 0"; fi ) & done; wait"#;

fn spawn_probes(
    cluster: &ClusterLab,
    from: Peer,
    targets: &[(Ipv4Addr, u16)],
) -> anyhow::Result<Child> {
    let script = format!("PROBE_SECONDS={PROBE_SECONDS}; {PROBE_SCRIPT}");
    let mut args: Vec<String> = [
        "exec", "-n", from.ns, from.pod, "--", "sh", "-c", &script, "probe",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(targets.iter().map(|(ip, port)| format!("{ip}:{port}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster
        .kubectl_command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl exec")
}

fn collect_probes(
    from: Peer,
    child: Child,
    targets: &[(Ipv4Addr, u16)],
) -> anyhow::Result<BTreeMap<(Ipv4Addr, u16), bool>> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "probing from {from}: kubectl exec: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut reached = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parsed = line.split_once(' ').and_then(|(target, ok)| {
            let (ip, port) = target.split_once(':')?;
            Some(((ip.parse().ok()?, port.parse().ok()?), ok == "1"))
        });
        let (target, ok) = parsed.with_context(|| format!("probe output from {from}: {line:?}"))?;
        reached.insert(target, ok);
    }
    if let Some(missing) = targets.iter().find(|t| !reached.contains_key(t)) {
        bail!("probing from {from}: no answer for {missing:?}");
    }
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tables_let_every_pod_reach_itself() {
        let deny_all = Truth::expected(|_, _, _| false);
        assert_eq!(deny_all.0.len(), 9 * 9 * 2);
        let reached: usize = deny_all.0.values().filter(|&&v| v).count();
        assert_eq!(reached, 9 * 2);
        let open = Truth::expected(|_, _, _| true);
        assert_eq!(open.differences(&deny_all), 9 * 9 * 2 - 9 * 2);
    }

    #[test]
    fn comparison_marks_only_the_cells_that_differ() {
        let expected = Truth::expected(|_, to, _| !to.is("x/a"));
        let observed = Truth::expected(|from, to, _| !(to.is("x/a") && from.ns != "y"));
        let text = expected.compare(&observed);
        // y's three pods reach x/a on both ports though they should not.
        assert_eq!(text.matches('!').count(), 6, "{text}");
        assert_eq!(expected.differences(&observed), 6);
    }

    #[test]
    fn peers_are_named_ns_slash_pod() {
        let p = peers();
        assert_eq!(p.len(), 9);
        assert_eq!(p[0].to_string(), "x/a");
        assert!(p[5].is("y/c"));
        assert!(!p[5].is("y/cc"));
    }
}
