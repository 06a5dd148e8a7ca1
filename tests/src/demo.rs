//! `cargo xtask demo`: the README's quick start, run inside a lab machine so that it changes
//! nothing on the host: `apiary up`, import the busybox image, apply `examples/demo.yaml`, reach
//! every web pod from the client pod over the eBPF data plane, show the programs and counters,
//! `apiary down`.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use crate::{cluster::wait, lab, machine::LabMachine};

/// The demo manifest, shipped with the repository.
pub fn manifest() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.yaml")
}

/// Waits for the demo's two web pods and its client; returns the web pods' IPs.
pub fn wait_for_demo(machine: &LabMachine, timeout: Duration) -> anyhow::Result<Vec<String>> {
    wait("two ready web pods and the client", timeout, || {
        let pods: Value =
            serde_json::from_str(&machine.kubectl_ok(&["get", "pods", "-o", "json"]).ok()?).ok()?;
        let ready = |p: &&Value| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        };
        let items = pods["items"].as_array()?;
        let web: Vec<String> = items
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web")
            .filter(ready)
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
            .collect();
        let client = items
            .iter()
            .filter(ready)
            .any(|p| p["metadata"]["name"] == "client");
        (web.len() == 2 && client).then_some(web)
    })
}

/// Fetches the web page at `ip` from the client pod.
pub fn fetch(machine: &LabMachine, ip: &str) -> anyhow::Result<String> {
    machine.kubectl_ok(&[
        "exec",
        "client",
        "--",
        "timeout",
        "5",
        "wget",
        "-qO-",
        &format!("http://{ip}:8080/"),
    ])
}

pub fn run() -> anyhow::Result<()> {
    if let Some(reason) = crate::privileges::missing() {
        anyhow::bail!("the demo {reason}");
    }
    let machine = LabMachine::new()?;
    let data = machine.data_dir().display().to_string();
    println!("a lab machine: netns {} (10.123.0.1)\n", machine.netns);
    println!("$ apiary up --data-dir {data}");
    let up = machine.apiary(&["up", "--data-dir", &data]);
    let result = (|| -> anyhow::Result<()> {
        print!("{}", up?);
        let archive = machine.dir.path().join("busybox.tar");
        apiary_images::build::busybox_archive(&archive).context("building the busybox image")?;
        let root = machine.data_dir().join("images").display().to_string();
        println!("\n$ apiary image import busybox.tar --root {root}");
        print!(
            "{}",
            machine.apiary(&[
                "image",
                "import",
                &archive.display().to_string(),
                "--root",
                &root
            ])?
        );
        let kubeconfig = machine.kubeconfig().display().to_string();
        println!("\n$ apiary apply -f examples/demo.yaml");
        print!(
            "{}",
            machine.apiary(&[
                "--kubeconfig",
                &kubeconfig,
                "apply",
                "-f",
                &manifest().display().to_string()
            ])?
        );
        let ips = wait_for_demo(&machine, Duration::from_secs(120))?;
        println!("\n$ kubectl get pods -o wide");
        print!("{}", machine.kubectl_ok(&["get", "pods", "-o", "wide"])?);
        for ip in &ips {
            println!("\n$ kubectl exec client -- wget -qO- http://{ip}:8080/");
            print!("{}", fetch(&machine, ip)?);
        }
        // The Service, by name: cluster DNS, then the socket load balancer. The first try may
        // come before the agent has programmed it.
        println!("\n$ kubectl exec client -- wget -qO- http://web/");
        let by_name = crate::cluster::wait("the web Service", Duration::from_secs(30), || {
            machine
                .kubectl_ok(&[
                    "exec",
                    "client",
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-qO-",
                    "http://web/",
                ])
                .ok()
        })?;
        print!("{by_name}");
        println!("\n$ apiary net services");
        print!(
            "{}",
            machine.apiary(&["--kubeconfig", &kubeconfig, "net", "services"])?
        );
        println!("\n$ bpftool net show   # on the machine");
        print!(
            "{}",
            lab::exec(&machine.netns, &["bpftool", "net", "show"])?
        );
        // The socket load balancer sits on the cgroup v2 root: it sees every socket.
        if let Some(root) = apiary_node_agent::dataplane::cgroup2_root() {
            let root = root.display().to_string();
            println!("\n$ bpftool cgroup show {root}");
            // Not `ip netns exec`: it remounts /sys, hiding the cgroup mounts.
            let out = std::process::Command::new("bpftool")
                .args(["cgroup", "show", &root])
                .output()
                .context("running bpftool")?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(())
    })();
    println!("\n$ apiary down --data-dir {data}");
    match machine.down() {
        Ok(out) => print!("{out}"),
        Err(e) => eprintln!("{e:#}"),
    }
    result
}
