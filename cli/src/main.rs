//! `apiary`: the command line for Apiary clusters, a kubectl for the commands people use most.

mod age;
mod apply;
mod bootstrap;
mod client;
mod cluster;
mod create;
mod delete;
mod describe;
mod discovery;
mod exec;
mod get;
mod ha;
mod image;
mod kubeconfig;
mod logs;
mod manifest;
mod metadata;
mod net;
mod patch;
mod report;
mod scale;
mod secrets;
mod table;
mod token;

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "apiary", version, about = "Drive an Apiary cluster")]
struct Cli {
    /// The kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, /var/lib/apiary/kubeconfig).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the client version.
    Version,
    /// Create or update objects from manifests, three-way like `kubectl apply`.
    Apply(apply::Args),
    /// List objects, or show some, as a table, YAML, JSON or names.
    Get(get::Args),
    /// Show objects in detail, with their events.
    Describe(describe::Args),
    /// Delete objects and wait until they are gone.
    Delete(delete::Args),
    /// Create objects: a namespace, or those of manifests.
    Create(create::Args),
    /// Set (`KEY=VALUE`) or remove (`KEY-`) labels.
    Label(metadata::Args),
    /// Set (`KEY=VALUE`) or remove (`KEY-`) annotations.
    Annotate(metadata::Args),
    /// Set the replica count of a Deployment, ReplicaSet or StatefulSet.
    Scale(scale::Args),
    /// Start a one-node cluster on this machine (control plane and node agent, in the
    /// background) and wait until the node is Ready.
    Up(cluster::UpArgs),
    /// Show what `apiary up` or `apiary node join` started: the processes, their versions and
    /// last logged errors, the agent's health and the node's Ready condition.
    Status(cluster::StatusArgs),
    /// Stop what `apiary up` or `apiary node join` started, and remove every pod, network
    /// namespace, veth, cgroup and BPF program of the node.
    Down(cluster::DownArgs),
    /// Manage this machine as a node of a cluster.
    #[command(subcommand)]
    Node(cluster::NodeCommand),
    /// Manage bootstrap tokens, with which nodes join (`token create` prints the join command).
    #[command(subcommand)]
    Token(token::Command),
    /// Print a container's log (`-f` follows it).
    Logs(logs::Args),
    /// Run a command in a container; its exit code becomes ours.
    Exec(exec::Args),
    /// Manage the node's local image store (no cluster needed).
    Image(image::Args),
    /// Inspect what the nodes' eBPF data plane holds (`net services`).
    Net(net::Args),
    /// Secrets at rest (`secrets rotate`: rewrite every Secret under the first encryption key).
    Secrets(secrets::Args),
}

/// What every command that talks to the cluster needs.
#[derive(Debug)]
pub struct Session {
    pub client: client::Client,
    /// The namespace of namespaced objects that do not name one.
    pub namespace: String,
    /// Whether `-n` chose [`Session::namespace`].
    pub namespace_from_flag: bool,
}

impl Session {
    fn open(cli: &Cli) -> anyhow::Result<Self> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let env = std::env::var("KUBECONFIG").ok();
        let path = kubeconfig::locate(cli.kubeconfig.as_deref(), env.as_deref(), home.as_deref());
        let conn = kubeconfig::load(&path, cli.context.as_deref())?;
        let client = client::Client::new(&conn)?;
        let (namespace, namespace_from_flag) = match &cli.namespace {
            Some(ns) => (ns.clone(), true),
            None => (
                conn.namespace.unwrap_or_else(|| "default".to_owned()),
                false,
            ),
        };
        Ok(Self {
            client,
            namespace,
            namespace_from_flag,
        })
    }

    /// Asks the server which types it has.
    pub async fn discover(&self) -> anyhow::Result<discovery::Discovery> {
        discovery::Discovery::load(&self.client)
            .await
            .context("discovering the server's resource types")
    }
}

/// How a command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Some objects failed; each was reported already.
    SomeFailed,
    /// Exit with this code (`exec`: the remote command's).
    Exit(u8),
}

impl From<&report::Failures> for Outcome {
    fn from(failures: &report::Failures) -> Self {
        if failures.any() {
            Self::SomeFailed
        } else {
            Self::Success
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Version => {
            writeln!(out, "apiary {}", env!("CARGO_PKG_VERSION"))?;
            return Ok(Outcome::Success);
        }
        Command::Up(args) => return cluster::up(args, &mut out).await.map(|()| Outcome::Success),
        Command::Down(args) => {
            return cluster::down(args, &mut out)
                .await
                .map(|()| Outcome::Success);
        }
        Command::Status(args) => return cluster::status(args, &mut out).await,
        Command::Image(args) => return image::run(args, &mut out).await,
        Command::Node(cluster::NodeCommand::Join(args)) => {
            return cluster::join(args, &mut out)
                .await
                .map(|()| Outcome::Success);
        }
        _ => {}
    }
    if let Command::Image(args) = &cli.command {
        return image::run(args, &mut out).await;
    }
    let session = Session::open(&cli)?;
    match cli.command {
        Command::Version
        | Command::Up(_)
        | Command::Down(_)
        | Command::Status(_)
        | Command::Node(_)
        | Command::Image(_) => unreachable!("handled above"),
        Command::Apply(args) => apply::run(&session, &args, &mut out).await,
        Command::Get(args) => get::run(&session, &args, &mut out).await,
        Command::Describe(args) => describe::run(&session, &args, &mut out).await,
        Command::Delete(args) => delete::run(&session, &args, &mut out).await,
        Command::Create(args) => create::run(&session, &args, &mut out).await,
        Command::Label(args) => {
            metadata::run(&session, metadata::Field::Labels, &args, &mut out).await
        }
        Command::Annotate(args) => {
            metadata::run(&session, metadata::Field::Annotations, &args, &mut out).await
        }
        Command::Scale(args) => scale::run(&session, &args, &mut out).await,
        Command::Logs(args) => logs::run(&session, &args, &mut out).await,
        Command::Exec(args) => exec::run(&session, &args).await,
        Command::Net(args) => net::run(&session, &args, &mut out).await,
        Command::Secrets(args) => secrets::run(&session, &args, &mut out).await,
        Command::Token(command) => token::run(&session, &command, &mut out)
            .await
            .map(|()| Outcome::Success),
    }
}

/// Whether `error` is only that whoever read our output went away (`apiary get … | head`).
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A command line clap refused, said in one line, as every other error: the message without
/// clap's usage and tips, which `--help` has.
fn usage_error(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required: apply, get, describe, delete, create, label, annotate, scale, logs, exec, net, image, up, down, status, node, token or version".to_owned();
    }
    let rendered = e.render().to_string();
    let message = rendered.split("\n\n").next().unwrap_or_default();
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("error: {} (see 'apiary --help')", usage_error(&e));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // `exec -i` may leave a read of stdin blocked on a thread: don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::FAILURE,
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
