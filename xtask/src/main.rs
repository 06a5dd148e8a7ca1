//! `cargo xtask`: set up a machine, build and load the BPF programs, lint, and run the test tiers.

mod ebpf;
mod fuzz;
mod images;
mod protobuf;
mod setup;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Apiary's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what this machine lacks: Debian packages, rust-src, bpf-linker; mount bpffs.
    Setup,
    /// Build the BPF object from `ebpf/` (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Lint the host crates and the BPF crate with `-D warnings`.
    Clippy,
    /// Attach the BPF programs to an interface (for debugging).
    Load(ebpf::LoadArgs),
    /// Detach what `load` attached (all of it, or one interface).
    Unload(ebpf::UnloadArgs),
    /// Set up, build, and show the data plane at work in a throwaway lab.
    Demo,
    /// Run a benchmark: prints a table and writes target/bench/<name>.json.
    ///
    /// Arguments after `--` go to the scheduler bench: `cargo xtask bench scheduler -- --runs 5
    /// --nodes 1000,5000 --pods 10000` (the defaults but 5 runs; each figure is printed as
    /// min / median / max over the runs).
    Bench {
        #[arg(value_enum)]
        suite: BenchSuite,
        /// Passed to the bench binary (the scheduler bench only).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Hostile clients against the API server while kubectl keeps working: idle connections,
    /// stalled handshakes, oversized and exploding bodies, 10,000 watches, random bytes to every
    /// endpoint. Prints the figures, writes target/bench/chaos.json, fails if the server does
    /// not hold (`--quick`: CI's bounded run).
    Chaos {
        #[arg(long)]
        quick: bool,
    },
    /// (Root.) An HA control plane (three etcd members, three control planes) and a two-node
    /// lab cluster on it losing parts under a write load and request loops through a ClusterIP
    /// and by DNS name: the leading control plane, an etcd member, etcd's quorum, an agent, a
    /// node; then the embedded store's disk. Prints writes lost, outages, failed requests and
    /// recovery times, writes target/bench/faults.json, fails if a promise is broken
    /// (`--quick`: CI's bounded run).
    Faults {
        #[arg(long)]
        quick: bool,
    },
    /// Build the test images: target/images/busybox.tar (localhost/busybox:latest).
    Images,
    /// The whole suite, as CI runs it: setup, fmt, clippy, unit and privileged tests, and a
    /// short run of every fuzz target.
    Test,
    /// Run the fuzz targets (cargo-fuzz, nightly) for a bounded time each.
    Fuzz(fuzz::FuzzArgs),
    /// Write api/src/protobuf/table.rs, the Kubernetes protobuf schema, from the k8s-pb and
    /// k8s-openapi sources in the lockfile (`--check`: fail if it is out of date instead).
    GenProtobuf {
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchSuite {
    /// The API server: creates/s, list and watch fan-out, embedded store vs etcd.
    Api,
    /// The scheduler on 1,000 and 5,000 hollow nodes, and a 1,000-replica rollout: each figure
    /// min / median / max over `--runs` (3), with creates/s, bind latency, the scheduler's time
    /// per pod and the CPU of the control plane and of the hollow nodes beside it.
    Scheduler,
    /// Startup latency of 50 pods on one node, pod-to-pod TCP request/response rates (same
    /// node, cross node) against a plain veth pair, and the agent's memory.
    Pods,
    /// Request latency to a pod directly, through a ClusterIP (socket LB) and through a
    /// kube-proxy-shaped iptables chain with 1, 1,000 and 10,000 services; how fast the real
    /// agent programs 10,000 Services, and one more.
    Services,
    /// Request rate to a pod selected by 1,000 NetworkPolicies against one selected by none,
    /// and create → enforced on both nodes of one more policy with 250 present.
    Policy,
    /// Claim created → Bound → pod Ready for 50 claims at once against 50 pods without
    /// volumes, and write throughput into a local-path volume against the same directory
    /// written directly.
    Storage,
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the workspace) or `target/`.
pub(crate) fn target_dir() -> std::path::PathBuf {
    let root = shell::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// The release `apiary-lab` and what its cluster benchmarks run next to it: the control plane,
/// the node agent and the shim.
pub(crate) fn build_lab_release() -> anyhow::Result<()> {
    shell::cargo(&[
        "build",
        "--release",
        "-p",
        "apiary-control-plane",
        "-p",
        "apiary-node-agent",
        "-p",
        "apiary-runtime",
        "-p",
        "apiary-tests",
        "--bins",
    ])
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => ebpf::build().map(|object| {
            println!("built {}", object.display());
        }),
        Command::Clippy => test::clippy(),
        Command::Load(args) => ebpf::load(&args),
        Command::Unload(args) => ebpf::unload(&args),
        Command::Demo => {
            setup::run()?;
            // The demo runs `apiary up`, which starts the other binaries from target/debug.
            shell::cargo(&["build", "--workspace", "--exclude", "apiary-ebpf"])?;
            shell::cargo(&[
                "run",
                "--quiet",
                "-p",
                "apiary-tests",
                "--bin",
                "apiary-lab",
                "--",
                "demo",
            ])
        }
        Command::Images => images::build(),
        Command::GenProtobuf { check } => protobuf::generate(check),
        Command::Test => test::run(),
        Command::Chaos { quick } => {
            setup::run()?;
            test::chaos(quick)
        }
        Command::Faults { quick } => {
            setup::run()?;
            test::faults(quick)
        }
        Command::Fuzz(args) => {
            setup::run()?;
            fuzz::run(&args)
        }
        Command::Bench { suite, args } => {
            if !args.is_empty() && !matches!(suite, BenchSuite::Scheduler) {
                anyhow::bail!("only `bench scheduler` takes arguments after `--`");
            }
            setup::run()?;
            match suite {
                BenchSuite::Api => {
                    shell::cargo(&["bench", "-p", "apiary-control-plane", "--bench", "api"])
                }
                BenchSuite::Pods => {
                    build_lab_release()?;
                    let target = target_dir();
                    shell::run(
                        std::process::Command::new(target.join("release/apiary-lab"))
                            .arg("bench-pods")
                            .arg("--json")
                            .arg(target.join("bench/pods.json")),
                    )
                }
                BenchSuite::Storage => {
                    build_lab_release()?;
                    let target = target_dir();
                    shell::run(
                        std::process::Command::new(target.join("release/apiary-lab"))
                            .arg("bench-storage")
                            .arg("--json")
                            .arg(target.join("bench/storage.json")),
                    )
                }
                BenchSuite::Policy => {
                    build_lab_release()?;
                    let target = target_dir();
                    shell::run(
                        std::process::Command::new(target.join("release/apiary-lab"))
                            .arg("bench-policy")
                            .arg("--json")
                            .arg(target.join("bench/policy.json")),
                    )
                }
                BenchSuite::Services => {
                    // The comparison needs iptables; only this bench installs it: the product
                    // never uses it.
                    if shell::output(
                        std::process::Command::new("sh")
                            .args(["-c", "command -v iptables-restore"]),
                    )
                    .is_none()
                    {
                        shell::run(
                            std::process::Command::new("apt-get")
                                .args(["install", "-y", "-qq", "iptables"])
                                .env("DEBIAN_FRONTEND", "noninteractive"),
                        )?;
                    }
                    build_lab_release()?;
                    let target = target_dir();
                    shell::run(
                        std::process::Command::new(target.join("release/apiary-lab"))
                            .arg("bench-services")
                            .arg("--json")
                            .arg(target.join("bench/services.json")),
                    )
                }
                BenchSuite::Scheduler => {
                    // The hollow nodes run from the release node agent, built first.
                    shell::cargo(&["build", "--release", "-p", "apiary-node-agent"])?;
                    let agent = shell::workspace_root().join("target/release/apiary-node-agent");
                    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                    shell::run(
                        std::process::Command::new(cargo)
                            .args([
                                "bench",
                                "-p",
                                "apiary-control-plane",
                                "--bench",
                                "scheduler",
                                "--",
                            ])
                            .args(&args)
                            .env("APIARY_NODE_AGENT", agent),
                    )
                }
            }
        }
    }
}
