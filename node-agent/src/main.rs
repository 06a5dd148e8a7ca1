//! `apiary-node-agent`: the per-machine agent.

mod hollow;

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use apiary_node_agent::{
    dataplane::{self, DEFAULT_PIN_DIR, Dataplane, PodTrafficMap},
    netns,
};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "apiary-node-agent", version, about = "Apiary's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: register this machine as a node and run the pods bound to it.
    Run(Box<apiary_node_agent::agent::AgentConfig>),
    /// Remove every pod, container, sandbox, veth, IP lease, BPF program and pin the agent
    /// made (after stopping it).
    Reset(apiary_node_agent::agent::reset::ResetArgs),
    /// Operate the eBPF data plane by hand (debugging; the agent does this for its pods).
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Simulate nodes that run every pod bound to them at once, without containers (tests and
    /// scale runs).
    Hollow(hollow::HollowArgs),
    /// Serve cluster DNS with the records the agent sends (the agent starts this process; it
    /// goes on answering while the agent is down).
    Dns(apiary_node_agent::dns::DnsArgs),
}

#[derive(Debug, Subcommand)]
enum DataplaneCommand {
    /// Attach the pod programs to a host-side veth.
    Attach(Target),
    /// Detach the pod programs from a host-side veth.
    Detach(Target),
    /// Remove the pinned maps (after detaching everything that uses them).
    Unpin(Location),
    /// Print the per-pod traffic counters.
    Traffic(Location),
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The interface (a pod's host-side veth).
    #[arg(long)]
    iface: String,
    #[command(flatten)]
    location: Location,
}

/// Which network namespace, and so which pinned maps: interface indexes are per namespace, so
/// each namespace gets maps of its own.
#[derive(Debug, clap::Args)]
struct Location {
    /// Network namespace (name under /run/netns, or a path) [default: the agent's own].
    #[arg(long)]
    netns: Option<String>,
    /// Directory of the pinned maps [default: /sys/fs/bpf/apiary, or .../netns/NS].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

impl Location {
    fn pin_dir(&self) -> PathBuf {
        self.pin_dir.clone().unwrap_or_else(|| match &self.netns {
            Some(ns) => Path::new(DEFAULT_PIN_DIR)
                .join("netns")
                .join(ns.replace('/', "_")),
            None => PathBuf::from(DEFAULT_PIN_DIR),
        })
    }

    fn netns_path(&self) -> Option<PathBuf> {
        self.netns.as_deref().map(netns::path_of)
    }

    fn describe(&self) -> String {
        self.netns.as_ref().map_or_else(
            || "the agent's network namespace".to_owned(),
            |ns| format!("netns {ns}"),
        )
    }
}

/// A fatal error is one line on stderr (which is the agent's log under `apiary up`), `error:`
/// and its causes, and exit code 1; never the backtrace `anyhow` adds to the `Debug` of an
/// error returned from `main` when `RUST_BACKTRACE` is set. Usage errors are clap's.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Dataplane(command) => command,
        Command::Run(config) => return block_on(apiary_node_agent::agent::run(*config)),
        Command::Hollow(args) => return block_on(hollow::run(args)),
        Command::Reset(args) => return block_on(apiary_node_agent::agent::reset::reset(args)),
        Command::Dns(args) => {
            apiary_node_agent::dns::standalone::prepare(&args);
            // Two threads whatever the machine: a node's DNS load needs no more, and the process
            // stays small next to the pods.
            let serve = async { Ok(apiary_node_agent::dns::standalone::run(args).await?) };
            return block_on_threads(Some(2), serve);
        }
    };
    match command {
        DataplaneCommand::Attach(Target { iface, location }) => {
            let pin_dir = location.pin_dir();
            let mut dataplane = Dataplane::load(&pin_dir).context("loading the data plane")?;
            let attachment = netns::run_in_optional(location.netns_path().as_deref(), || {
                dataplane.attach_pod(&iface)
            })??;
            println!(
                "attached in {}: {attachment}; maps pinned in {}",
                location.describe(),
                pin_dir.display()
            );
        }
        DataplaneCommand::Detach(Target { iface, location }) => {
            let pin_dir = location.pin_dir();
            let detached = netns::run_in_optional(location.netns_path().as_deref(), || {
                dataplane::detach_pod(&pin_dir, &iface)
            })??;
            let names: Vec<&str> = detached.iter().map(|p| p.name()).collect();
            println!(
                "detached from {iface} in {}: {}",
                location.describe(),
                if names.is_empty() {
                    "nothing was attached".to_owned()
                } else {
                    names.join(", ")
                }
            );
        }
        DataplaneCommand::Unpin(location) => {
            let pin_dir = location.pin_dir();
            let removed = dataplane::unpin(&pin_dir)?;
            if removed.is_empty() {
                println!("unpinned nothing: no maps in {}", pin_dir.display());
            }
            for path in removed {
                println!("unpinned {}", path.display());
            }
        }
        DataplaneCommand::Traffic(location) => {
            let pin_dir = location.pin_dir();
            let map = PodTrafficMap::open(&pin_dir)
                .with_context(|| format!("no data plane pinned in {}", pin_dir.display()))?;
            println!(
                "{:>8} {:>13} {:>14} {:>12} {:>13}",
                "IFINDEX", "FROM-POD-PKTS", "FROM-POD-BYTES", "TO-POD-PKTS", "TO-POD-BYTES"
            );
            for (ifindex, t) in map.all()? {
                println!(
                    "{ifindex:>8} {:>13} {:>14} {:>12} {:>13}",
                    t.from_pod_packets, t.from_pod_bytes, t.to_pod_packets, t.to_pod_bytes
                );
            }
        }
    }
    Ok(())
}

/// Runs `work` on a multi-threaded runtime with logging set up. Only the agent and hollow
/// nodes need one: the data-plane commands stay synchronous.
fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    block_on_threads(None, work)
}

/// [`block_on`] with `workers` worker threads [default: one per CPU].
fn block_on_threads(
    workers: Option<usize>,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // No colour codes in a log file (`apiary up` writes ours to `<data-dir>/logs`).
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        runtime.worker_threads(workers);
    }
    runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(work)
}
