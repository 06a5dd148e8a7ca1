//! `apiary net`: what the nodes' eBPF data plane holds, read from its maps by each node's agent
//! (`GET /apiary/v1/services` on the agent, through the API server's `nodes/proxy`) — what
//! forwarding actually uses, which may differ from what the API says.

use std::io::Write;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Outcome, Session, client::Client, report::Failures, table::Table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The service frontends each node load-balances and their backends, from its BPF maps.
    Services(ServicesArgs),
    /// NetworkPolicy verdicts of new flows, as the nodes' programs report them.
    Observe(ObserveArgs),
    /// NetworkPolicy as the nodes compiled it.
    Policy(PolicyArgs),
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// How a new connection between two pods would be judged — at the source's egress and the
    /// destination's ingress — read from the nodes' compiled policy maps, with the allowing rule.
    Trace(TraceArgs),
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The client pod, `NAMESPACE/NAME`.
    #[arg(long, value_name = "NS/POD")]
    pub from: String,
    /// The server pod, `NAMESPACE/NAME`.
    #[arg(long, value_name = "NS/POD")]
    pub to: String,
    /// The server's port.
    #[arg(long)]
    pub port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    /// Print both sides' verdicts as JSON.
    #[arg(short = 'o', long, value_parser = ["json"])]
    pub output: Option<String>,
}

/// Which verdicts `observe` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictFilter {
    Allowed,
    Denied,
    /// Dropped because the pod sent it from an address or MAC not its own.
    Spoofed,
    /// Allowed, but dropped: the pod holds its whole share of remembered flows.
    FlowTableFull,
}

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// Only flows of pods in this namespace (at either end).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only flows with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictFilter>,
    /// Keep following new flows.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only this node [default: every node].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Print the records as JSON, one per line.
    #[arg(short = 'o', long, value_parser = ["json"])]
    pub output: Option<String>,
}

/// The output formats of `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The entries as the agents report them, each with its `node`.
    Json,
    /// The table with frontend ids, flags and each backend's Maglev slots.
    Wide,
}

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    /// Only this node [default: every node].
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    match &args.command {
        Command::Services(args) => services(&session.client, args, out).await,
        Command::Observe(args) => observe(&session.client, args, out).await,
        Command::Policy(PolicyArgs {
            command: PolicyCommand::Trace(args),
        }) => trace(&session.client, args, out).await,
    }
}

/// A pod's address and node, for `trace`.
async fn locate(client: &Client, flag: &str, pod: &str) -> anyhow::Result<(String, String)> {
    let Some((namespace, name)) = pod
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
    else {
        bail!("--{flag}: {pod:?} is not NAMESPACE/NAME");
    };
    let object = match client
        .get(&format!("/api/v1/namespaces/{namespace}/pods/{name}"), &[])
        .await
    {
        Ok(object) => object,
        Err(e) if e.is_not_found() => bail!("--{flag}: pod {pod} not found"),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("--{flag}: pod {pod}"))),
    };
    let ip = object["status"]["podIP"].as_str().unwrap_or_default();
    let node = object["spec"]["nodeName"].as_str().unwrap_or_default();
    if ip.is_empty() || node.is_empty() {
        bail!("--{flag}: pod {pod} has no address yet");
    }
    Ok((ip.to_owned(), node.to_owned()))
}

async fn trace(client: &Client, args: &TraceArgs, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let (from_ip, from_node) = locate(client, "from", &args.from).await?;
    let (to_ip, to_node) = locate(client, "to", &args.to).await?;
    let port = args.port.to_string();
    let side = |node: String, pod: &str, direction: &'static str, peer: String| {
        let port = port.clone();
        let pod = pod.to_owned();
        async move {
            let path = format!("/api/v1/nodes/{node}/proxy/apiary/v1/policy/trace");
            let query = [
                ("pod", pod.as_str()),
                ("direction", direction),
                ("peer", peer.as_str()),
                ("protocol", args.protocol.as_str()),
                ("port", port.as_str()),
            ];
            let mut result = client
                .get(&path, &query)
                .await
                .with_context(|| format!("{direction} of {pod} on node {node:?}"))?;
            result["node"] = Value::String(node);
            anyhow::Ok(result)
        }
    };
    let egress = side(from_node, &args.from, "egress", to_ip).await?;
    let ingress = side(to_node, &args.to, "ingress", from_ip).await?;
    let allowed = egress["allowed"] == true && ingress["allowed"] == true;
    if args.output.is_some() {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "egress": egress, "ingress": ingress, "allowed": allowed,
        }))?;
        writeln!(out, "{text}")?;
    } else {
        for result in [&egress, &ingress] {
            writeln!(out, "{}", trace_line(result, &args.protocol, args.port))?;
        }
        writeln!(
            out,
            "verdict: {}",
            if allowed { "ALLOWED" } else { "DENIED" }
        )?;
    }
    Ok(Outcome::Success)
}

/// One side of a trace: `egress  x/a on node0: allowed by x/p egress[0] (identity 257)`.
pub fn trace_line(result: &Value, protocol: &str, port: u16) -> String {
    let head = format!(
        "{:<7} {} on {}:",
        result["direction"].as_str().unwrap_or("?"),
        result["pod"].as_str().unwrap_or("?"),
        result["node"].as_str().unwrap_or("?"),
    );
    let identity = &result["peerIdentity"];
    if result["enforced"] != true {
        return format!("{head} allowed (no policy selects it this way)");
    }
    match result["rule"].as_str() {
        Some(rule) if result["allowed"] == true => {
            let matched = match result["matchedIdentity"].as_u64() {
                Some(0) => " for any peer".to_owned(),
                Some(id) if id >= 1 << 24 => format!(" for the peer's ipBlock (class {id})"),
                _ => String::new(),
            };
            format!("{head} allowed by {rule}{matched} (peer identity {identity})")
        }
        _ => format!(
            "{head} DENIED: no rule allows peer identity {identity} on {}/{port}",
            protocol.to_ascii_uppercase()
        ),
    }
}

/// Streams every chosen node's verdicts; with several nodes and `--follow`, lines interleave as
/// they come.
async fn observe(
    client: &Client,
    args: &ObserveArgs,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let nodes = match &args.node {
        Some(node) => vec![node.clone()],
        None => node_names(client).await?,
    };
    let (lines, mut received) = tokio::sync::mpsc::channel::<anyhow::Result<Value>>(1024);
    for node in nodes {
        if node.is_empty() || node.contains('/') {
            bail!("{node:?} is not a valid node name");
        }
        let client = client.clone();
        let lines = lines.clone();
        let follow = args.follow;
        tokio::spawn(async move {
            let path = format!("/api/v1/nodes/{node}/proxy/apiary/v1/flows");
            let query: &[(&str, &str)] = if follow { &[("follow", "true")] } else { &[] };
            let mut response = match client.stream(&path, query).await {
                Ok(response) => response,
                Err(e) if is_node_not_found(&e, &node) => {
                    let _ = lines
                        .send(Err(anyhow::anyhow!("node {node:?} not found")))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = lines
                        .send(Err(anyhow::Error::new(e).context(format!("node {node:?}"))))
                        .await;
                    return;
                }
            };
            let mut pending = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => pending.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) => {
                        let _ = lines
                            .send(Err(anyhow::Error::new(e).context(format!("node {node:?}"))))
                            .await;
                        return;
                    }
                }
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(record) = serde_json::from_slice::<Value>(&line)
                        && lines.send(Ok(record)).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
    drop(lines);
    let mut failures = Failures::default();
    while let Some(record) = received.recv().await {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                failures.report(e);
                continue;
            }
        };
        if !matches(&record, args) {
            continue;
        }
        if args.output.is_some() {
            writeln!(out, "{record}")?;
        } else {
            writeln!(out, "{}", flow_line(&record))?;
        }
        out.flush()?;
    }
    Ok(Outcome::from(&failures))
}

/// Whether `record` passes `observe`'s filters.
fn matches(record: &Value, args: &ObserveArgs) -> bool {
    if let Some(verdict) = args.verdict {
        let wanted = match verdict {
            VerdictFilter::Allowed => "allowed",
            VerdictFilter::Denied => "denied",
            VerdictFilter::Spoofed => "spoofed",
            VerdictFilter::FlowTableFull => "flow-table-full",
        };
        if record["verdict"] != wanted {
            return false;
        }
    }
    if let Some(namespace) = &args.namespace {
        let prefix = format!("{namespace}/");
        let in_namespace = |pod: &Value| pod.as_str().is_some_and(|pod| pod.starts_with(&prefix));
        // A spoofed packet's source is a claim: the pod that sent it is the endpoint.
        if !in_namespace(&record["source"]["pod"])
            && !in_namespace(&record["destination"]["pod"])
            && !in_namespace(&record["endpoint"])
        {
            return false;
        }
    }
    true
}

/// One verdict as a line, Hubble-style:
/// `TIME NODE  x/a:40000 -> x/b:80 TCP ingress DENIED`.
pub fn flow_line(record: &Value) -> String {
    let end = |side: &str| {
        let peer = &record[side];
        let who = peer["pod"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| peer["address"].as_str().unwrap_or("?").to_owned());
        format!("{who}:{}", peer["port"])
    };
    let verdict = record["verdict"]
        .as_str()
        .unwrap_or("?")
        .to_ascii_uppercase();
    let by = if record["verdict"] == "spoofed" {
        format!(" (sent by {})", record["endpoint"].as_str().unwrap_or("?"))
    } else {
        record["policy"]
            .as_str()
            .map(|p| format!(" by {p}"))
            .unwrap_or_default()
    };
    format!(
        "{} {}  {} -> {} {} {} {verdict}{by}",
        record["time"].as_str().unwrap_or("?"),
        record["node"].as_str().unwrap_or("?"),
        end("source"),
        end("destination"),
        record["protocol"].as_str().unwrap_or("?"),
        record["direction"].as_str().unwrap_or("?"),
    )
}

async fn services(
    client: &Client,
    args: &ServicesArgs,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let mut failures = Failures::default();
    let mut entries: Vec<(String, Value)> = Vec::new();
    match &args.node {
        Some(node) => {
            for entry in node_services(client, node).await? {
                entries.push((node.clone(), entry));
            }
        }
        None => {
            for node in node_names(client).await? {
                match node_services(client, &node).await {
                    Ok(found) => entries.extend(found.into_iter().map(|e| (node.clone(), e))),
                    Err(e) => failures.report(e),
                }
            }
        }
    }
    match args.output {
        Some(Output::Json) => {
            let list: Vec<Value> = entries
                .into_iter()
                .map(|(node, mut entry)| {
                    if let Some(object) = entry.as_object_mut() {
                        object.insert("node".to_owned(), Value::String(node));
                    }
                    entry
                })
                .collect();
            let text = serde_json::to_string_pretty(&list).context("rendering JSON")?;
            writeln!(out, "{text}")?;
        }
        _ if entries.is_empty() => {
            if !failures.any() {
                eprintln!("No service frontends found");
            }
        }
        format => {
            table(&entries, format == Some(Output::Wide)).write(out, false)?;
        }
    }
    Ok(Outcome::from(&failures))
}

/// Every node's name, sorted.
async fn node_names(client: &Client) -> anyhow::Result<Vec<String>> {
    let list = client
        .get("/api/v1/nodes", &[])
        .await
        .context("listing the nodes")?;
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| node["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// What `node`'s agent reports, one entry per frontend.
async fn node_services(client: &Client, node: &str) -> anyhow::Result<Vec<Value>> {
    if node.is_empty() || node.contains('/') {
        bail!("{node:?} is not a valid node name");
    }
    let path = format!("/api/v1/nodes/{node}/proxy/apiary/v1/services");
    match client.get(&path, &[]).await {
        Ok(Value::Array(entries)) => Ok(entries),
        Ok(_) => bail!("node {node:?}: its agent's answer is not a list of frontends"),
        Err(e) if is_node_not_found(&e, node) => bail!("node {node:?} not found"),
        Err(e) if e.is_not_found() => Err(anyhow::Error::new(e).context(format!(
            "node {node:?}: its agent does not serve /apiary/v1/services (an older agent?)"
        ))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("node {node:?}"))),
    }
}

/// Whether the API server (not the node's agent) said that `node` does not exist.
fn is_node_not_found(error: &crate::client::Error, node: &str) -> bool {
    error.status().is_some_and(|status| {
        status.code == 404
            && (status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "nodes" && d.name == node)
                || status.message == format!("nodes {node:?} not found"))
    })
}

/// The table of `entries` (node, frontend): `wide` adds the frontend's id and flags and the
/// backends' Maglev slots.
pub fn table(entries: &[(String, Value)], wide: bool) -> Table {
    let mut headers = vec!["NODE", "FRONTEND", "SCOPE", "SERVICE"];
    if wide {
        headers.extend(["ID", "FLAGS"]);
    }
    headers.push("BACKENDS");
    if wide {
        headers.push("SLOTS");
    }
    let rows = entries
        .iter()
        .map(|(node, entry)| {
            let text = |v: &Value| v.as_str().map_or_else(|| none(v), str::to_owned);
            let mut row = vec![
                node.clone(),
                frontend(&entry["frontend"]),
                text(&entry["frontend"]["scope"]),
                text(&entry["service"]),
            ];
            if wide {
                row.push(none(&entry["id"]));
                row.push(flags(entry));
            }
            let backends = entry["backends"].as_array().map(Vec::as_slice);
            let backends = backends.unwrap_or_default();
            row.push(joined(backends.iter().map(backend)));
            if wide {
                row.push(joined(backends.iter().map(|b| none(&b["slots"]))));
            }
            row
        })
        .collect();
    Table {
        headers: headers.into_iter().map(str::to_owned).collect(),
        rows,
    }
}

/// `10.96.0.1:443/TCP`; NodePorts, on every node address, as `*:30080/TCP`.
fn frontend(frontend: &Value) -> String {
    let address = match frontend["address"].as_str() {
        Some("0.0.0.0") => "*".to_owned(),
        _ => none(&frontend["address"]),
    };
    format!(
        "{address}:{}/{}",
        none(&frontend["port"]),
        frontend["protocol"].as_str().unwrap_or("?")
    )
}

/// `10.244.1.5:6443`; `#7?` for a backend id the agent's maps do not hold.
fn backend(backend: &Value) -> String {
    match backend["address"].as_str() {
        Some(address) => format!("{address}:{}", none(&backend["port"])),
        None => format!("#{}?", none(&backend["id"])),
    }
}

/// `affinity=10800s,local`, `<none>`.
fn flags(entry: &Value) -> String {
    let flags: Vec<String> = entry["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|flag| match flag.as_str() {
            Some("affinity") => format!("affinity={}s", none(&entry["affinityTimeoutSeconds"])),
            Some(other) => other.to_owned(),
            None => flag.to_string(),
        })
        .collect();
    if flags.is_empty() {
        "<none>".to_owned()
    } else {
        flags.join(",")
    }
}

fn joined(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "<none>".to_owned()
    } else {
        items.join(", ")
    }
}

/// A scalar as text; `<none>` for null or missing.
fn none(value: &Value) -> String {
    match value {
        Value::Null => "<none>".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entries() -> Vec<(String, Value)> {
        vec![
            (
                "n1".to_owned(),
                json!({
                    "frontend": { "address": "10.96.0.1", "port": 443, "protocol": "TCP", "scope": "socket" },
                    "id": 7, "flags": ["affinity", "local"], "affinityTimeoutSeconds": 10800,
                    "backendCount": 2, "service": "default/kubernetes:https",
                    "backends": [
                        { "id": 3, "address": "10.244.1.5", "port": 6443, "protocol": "TCP", "slots": 511 },
                        { "id": 4, "address": "10.244.2.7", "port": 6443, "protocol": "TCP", "slots": 510 },
                    ],
                }),
            ),
            (
                "node-2".to_owned(),
                json!({
                    "frontend": { "address": "0.0.0.0", "port": 30080, "protocol": "UDP", "scope": "external" },
                    "id": 12, "flags": [], "affinityTimeoutSeconds": 0, "backendCount": 0,
                    "service": null, "backends": [],
                }),
            ),
            (
                "node-2".to_owned(),
                json!({
                    "frontend": { "address": "10.96.0.10", "port": 53, "protocol": "UDP", "scope": "socket" },
                    "id": 13, "flags": ["0x20"], "affinityTimeoutSeconds": 0, "backendCount": 1,
                    "service": "kube-system/dns:dns",
                    "backends": [{ "id": 9, "address": null, "port": null, "protocol": null, "slots": 1021 }],
                }),
            ),
        ]
    }

    #[test]
    fn a_verdict_reads_as_one_line_and_filters_apply() {
        let record = serde_json::json!({
            "time": "T", "node": "n1", "verdict": "denied", "direction": "ingress",
            "protocol": "TCP", "policy": null,
            "source": {"address": "10.0.0.1", "port": 40000, "pod": "x/c"},
            "destination": {"address": "10.0.0.2", "port": 8080, "pod": "y/b"},
        });
        assert_eq!(
            flow_line(&record),
            "T n1  x/c:40000 -> y/b:8080 TCP ingress DENIED"
        );
        let args = |namespace: Option<&str>, verdict| ObserveArgs {
            namespace: namespace.map(str::to_owned),
            verdict,
            follow: false,
            node: None,
            output: None,
        };
        assert!(matches(
            &record,
            &args(Some("y"), Some(VerdictFilter::Denied))
        ));
        assert!(!matches(&record, &args(Some("z"), None)));
        assert!(!matches(&record, &args(None, Some(VerdictFilter::Allowed))));
    }

    #[test]
    fn trace_lines_say_who_allowed_or_why_not() {
        let denied = serde_json::json!({"pod": "x/b", "node": "n1", "direction": "ingress",
            "enforced": true, "allowed": false, "peerIdentity": 258, "rule": null});
        assert_eq!(
            trace_line(&denied, "tcp", 8080),
            "ingress x/b on n1: DENIED: no rule allows peer identity 258 on TCP/8080"
        );
        let allowed = serde_json::json!({"pod": "x/a", "node": "n0", "direction": "egress",
            "enforced": true, "allowed": true, "peerIdentity": 2, "matchedIdentity": 0,
            "rule": "x/p egress[0]"});
        assert_eq!(
            trace_line(&allowed, "TCP", 80),
            "egress  x/a on n0: allowed by x/p egress[0] for any peer (peer identity 2)"
        );
        let open = serde_json::json!({"pod": "x/a", "node": "n0", "direction": "egress",
            "enforced": false, "allowed": true, "peerIdentity": 2});
        assert!(trace_line(&open, "TCP", 80).ends_with("allowed (no policy selects it this way)"));
    }

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out, false).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_table_shows_frontends_and_their_backends() {
        assert_eq!(
            render(&table(&entries(), false)),
            "\
NODE     FRONTEND            SCOPE      SERVICE                    BACKENDS
n1       10.96.0.1:443/TCP   socket     default/kubernetes:https   10.244.1.5:6443, 10.244.2.7:6443
node-2   *:30080/UDP         external   <none>                     <none>
node-2   10.96.0.10:53/UDP   socket     kube-system/dns:dns        #9?
"
        );
    }

    #[test]
    fn wide_adds_ids_flags_and_slots() {
        let wide = table(&entries(), true);
        assert_eq!(
            wide.headers,
            [
                "NODE", "FRONTEND", "SCOPE", "SERVICE", "ID", "FLAGS", "BACKENDS", "SLOTS"
            ]
        );
        assert_eq!(
            wide.rows[0][4..],
            [
                "7",
                "affinity=10800s,local",
                "10.244.1.5:6443, 10.244.2.7:6443",
                "511, 510"
            ]
        );
        assert_eq!(wide.rows[1][4..], ["12", "<none>", "<none>", "<none>"]);
        assert_eq!(wide.rows[2][5..], ["0x20", "#9?", "1021"]);
    }
}
