//! Building the BPF object, and loading it onto an interface by hand through the node agent.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::shell::{self, workspace_root};

const BPF_TARGET: &str = "bpfel-unknown-none";

/// Builds `ebpf/` as the node agent's build script does (aya-build's flags) and returns the object.
pub fn build() -> anyhow::Result<PathBuf> {
    shell::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--package",
                "apiary-ebpf",
            ])
            .args(["--release", "--target", BPF_TARGET, "-Z", "build-std=core"])
            // BTF for the verifier and bpftool; the arch cfg is what aya-ebpf expects.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
            )
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    Ok(workspace_root()
        .join("target")
        .join(BPF_TARGET)
        .join("release")
        .join("apiary-ebpf"))
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The interface to attach to.
    #[arg(long)]
    iface: String,
    /// The network namespace (name under /run/netns) that holds the interface.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UnloadArgs {
    /// Only this interface (default: everything `load` attached).
    #[arg(long)]
    iface: Option<String>,
    /// The network namespace of `--iface`.
    #[arg(long, requires = "iface")]
    netns: Option<String>,
}

/// What `load` attached, so that `unload` can undo it without being told.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Loaded {
    attachments: Vec<Attachment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Attachment {
    iface: String,
    netns: Option<String>,
}

fn record_path() -> PathBuf {
    workspace_root()
        .join("target")
        .join("xtask")
        .join("loaded.json")
}

fn read_record() -> anyhow::Result<Loaded> {
    match fs::read(record_path()) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("target/xtask/loaded.json"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::default()),
        Err(e) => Err(e).context("target/xtask/loaded.json"),
    }
}

fn write_record(loaded: &Loaded) -> anyhow::Result<()> {
    let path = record_path();
    fs::create_dir_all(path.parent().expect("record has a parent"))?;
    fs::write(&path, serde_json::to_vec_pretty(loaded)?).context("target/xtask/loaded.json")
}

fn node_agent() -> anyhow::Result<PathBuf> {
    shell::cargo(&["build", "--quiet", "--package", "apiary-node-agent"])?;
    Ok(workspace_root()
        .join("target")
        .join("debug")
        .join("apiary-node-agent"))
}

fn dataplane(agent: &Path, verb: &str, attachment: &Attachment) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["dataplane", verb]);
    if !attachment.iface.is_empty() {
        cmd.args(["--iface", &attachment.iface]);
    }
    if let Some(ns) = &attachment.netns {
        cmd.args(["--netns", ns]);
    }
    cmd
}

fn bpftool_net_show(attachment: &Attachment) -> anyhow::Result<()> {
    let mut cmd = match &attachment.netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "bpftool"]);
            cmd
        }
        None => Command::new("bpftool"),
    };
    shell::run(cmd.args(["net", "show", "dev", &attachment.iface]))
}

pub fn load(args: &LoadArgs) -> anyhow::Result<()> {
    let agent = node_agent()?;
    let attachment = Attachment {
        iface: args.iface.clone(),
        netns: args.netns.clone(),
    };
    shell::run(&mut dataplane(&agent, "attach", &attachment))?;
    let mut loaded = read_record()?;
    if !loaded.attachments.contains(&attachment) {
        loaded.attachments.push(attachment.clone());
    }
    write_record(&loaded)?;
    bpftool_net_show(&attachment)
}

pub fn unload(args: &UnloadArgs) -> anyhow::Result<()> {
    let mut loaded = read_record()?;
    let targets: Vec<Attachment> = match &args.iface {
        Some(iface) => vec![Attachment {
            iface: iface.clone(),
            netns: args.netns.clone(),
        }],
        None => loaded.attachments.clone(),
    };
    if targets.is_empty() {
        println!("unload: nothing was loaded");
        return Ok(());
    }
    let agent = node_agent()?;
    for target in &targets {
        match shell::run(&mut dataplane(&agent, "detach", target)) {
            Ok(()) => {}
            // The namespace or interface is gone, and our filters with it.
            Err(e) if target.netns.as_ref().is_some_and(|ns| !netns_exists(ns)) => {
                println!("unload: {e:#}; netns is gone, nothing left to detach");
            }
            Err(e) => return Err(e),
        }
        loaded.attachments.retain(|a| a != target);
        // The last interface of a namespace takes the namespace's pinned maps with it.
        if !loaded.attachments.iter().any(|a| a.netns == target.netns) {
            let unpin = Attachment {
                iface: String::new(),
                netns: target.netns.clone(),
            };
            shell::run(&mut dataplane(&agent, "unpin", &unpin))?;
        }
    }
    write_record(&loaded)
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Checks `load` and `unload` end to end on a veth in a throwaway namespace, reading the result
/// back with `bpftool net show` as a user would.
pub fn load_unload_smoke() -> anyhow::Result<()> {
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let netns = Netns(format!("apiary-xtask-{}", std::process::id()));
    shell::run(Command::new("ip").args(["netns", "add", &netns.0]))?;
    shell::run(
        Command::new("ip")
            .args(["-n", &netns.0, "link", "add", "xt0", "type", "veth"])
            .args(["peer", "name", "xt1"]),
    )?;
    shell::run(Command::new("ip").args(["-n", &netns.0, "link", "set", "xt0", "up"]))?;
    let attached = |netns: &str| -> anyhow::Result<Vec<String>> {
        let json = shell::output(Command::new("ip").args([
            "netns", "exec", netns, "bpftool", "-j", "net", "show", "dev", "xt0",
        ]))
        .context("bpftool net show")?;
        let shown: serde_json::Value = serde_json::from_str(&json)?;
        Ok(shown[0]["tc"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["kind"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or("")
                )
            })
            .collect())
    };

    load(&LoadArgs {
        iface: "xt0".into(),
        netns: Some(netns.0.clone()),
    })?;
    let programs = attached(&netns.0)?;
    anyhow::ensure!(
        programs == ["clsact/ingress from_pod", "clsact/egress to_pod"],
        "after load, bpftool net show lists {programs:?}"
    );
    unload(&UnloadArgs {
        iface: Some("xt0".into()),
        netns: Some(netns.0.clone()),
    })?;
    let programs = attached(&netns.0)?;
    anyhow::ensure!(
        programs.is_empty(),
        "after unload, bpftool net show lists {programs:?}"
    );
    let pins = Path::new("/sys/fs/bpf/apiary/netns").join(&netns.0);
    anyhow::ensure!(!pins.exists(), "unload left {} behind", pins.display());
    println!("load/unload: attached, listed by bpftool, detached and unpinned");
    Ok(())
}
