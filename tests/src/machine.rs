//! A lab namespace standing in for a whole machine, for `apiary up` and the demo: its only
//! address is on the lab's underlay, and every command runs inside it with `nsenter --net`
//! (the machine's mounts, cgroups and bpffs are the host's, as on a real machine).

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context as _, bail};

use crate::{
    cluster::binary,
    lab::{Lab, nsenter},
};

/// One lab "machine" and a data directory for the cluster on it.
#[derive(Debug)]
pub struct LabMachine {
    pub netns: String,
    pub dir: tempfile::TempDir,
    // Dropped last: the namespace outlives what ran in it.
    pub lab: Lab,
}

impl LabMachine {
    pub fn new() -> anyhow::Result<Self> {
        let mut lab = Lab::new()?;
        let machine = lab.add_bare_node(1500)?;
        Ok(Self {
            netns: machine.netns,
            dir: tempfile::Builder::new().prefix("apiary-up-").tempdir()?,
            lab,
        })
    }

    /// Another machine on the same underlay (`10.123.0.<k>`): its namespace.
    pub fn add_machine(&mut self) -> anyhow::Result<String> {
        Ok(self.lab.add_bare_node(1500)?.netns)
    }

    /// Runs `program args` inside the machine `netns` of this lab.
    pub fn run_on(&self, netns: &str, program: &Path, args: &[&str]) -> anyhow::Result<Output> {
        nsenter(netns, program)
            .args(args)
            .output()
            .with_context(|| format!("running {} in {netns}", program.display()))
    }

    /// Runs `apiary args` on machine `netns`; its stdout, or an error with its output.
    pub fn apiary_on(&self, netns: &str, args: &[&str]) -> anyhow::Result<String> {
        ok(
            &format!("apiary {}", args.join(" ")),
            self.run_on(netns, &binary("apiary"), args)?,
        )
    }

    /// The cluster's data directory (`apiary up --data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    /// Runs `program args` inside the machine.
    pub fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<Output> {
        self.run_on(&self.netns, program, args)
    }

    /// Runs `apiary args` inside the machine; its stdout, or an error with its output.
    pub fn apiary(&self, args: &[&str]) -> anyhow::Result<String> {
        ok(
            &format!("apiary {}", args.join(" ")),
            self.run(&binary("apiary"), args)?,
        )
    }

    /// Runs `kubectl --kubeconfig <the cluster's> args` inside the machine.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let kubeconfig = self.kubeconfig().display().to_string();
        let mut all = vec!["--kubeconfig", &kubeconfig];
        all.extend_from_slice(args);
        self.run(Path::new("kubectl"), &all)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        ok(&format!("kubectl {}", args.join(" ")), self.kubectl(args)?)
    }

    /// `apiary down` for this machine's cluster.
    pub fn down(&self) -> anyhow::Result<String> {
        self.apiary(&["down", "--data-dir", &self.data_dir().display().to_string()])
    }
}

fn ok(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
