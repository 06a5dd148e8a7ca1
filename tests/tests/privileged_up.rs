//! `apiary up`, the demo of the README, and `apiary down`, on a machine of its own: a lab
//! namespace stands in for the machine (its only address is on the lab's underlay), and every
//! command runs inside it with `nsenter --net`.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use apiary_tests::{
    cluster::{binary, wait},
    lab::{Lab, ip},
    require_privileges,
};
use serde_json::Value;

fn run_in(netns: &str, program: &Path, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(program)
        .args(args)
        .output()
        .expect("running a command in the lab")
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the cluster even when an assertion fails half-way.
struct Down<'a> {
    netns: &'a str,
    data_dir: &'a Path,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let out = run_in(
            self.netns,
            &binary("apiary"),
            &["down", "--data-dir", &self.data_dir.display().to_string()],
        );
        if !out.status.success() {
            eprintln!("apiary down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[test]
fn up_runs_the_demo_and_down_removes_everything() {
    require_privileges!();
    let mut lab = Lab::new().unwrap();
    let machine = lab.add_bare_node(1500).unwrap();
    let ns = machine.netns.clone();
    let dir = tempfile::Builder::new()
        .prefix("apiary-up-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let apiary = binary("apiary");

    let up = run_in(
        &ns,
        &apiary,
        &["up", "--data-dir", &data_arg, "--timeout", "90"],
    );
    let _down = Down {
        netns: &ns,
        data_dir: &data,
    };
    let said = ok("apiary up", &up);
    assert!(said.contains("is Ready"), "{said}");
    let kubeconfig = data.join("kubeconfig");
    assert!(said.contains(&kubeconfig.display().to_string()), "{said}");

    // The README's demo: import the test image, apply the manifest.
    let archive = dir.path().join("busybox.tar");
    apiary_images::build::busybox_archive(&archive).unwrap();
    let root = data.join("images").display().to_string();
    ok(
        "apiary image import",
        &run_in(
            &ns,
            &apiary,
            &[
                "image",
                "import",
                &archive.display().to_string(),
                "--root",
                &root,
            ],
        ),
    );
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.yaml");
    let kc = kubeconfig.display().to_string();
    ok(
        "apiary apply",
        &run_in(
            &ns,
            &apiary,
            &[
                "--kubeconfig",
                &kc,
                "apply",
                "-f",
                &manifest.display().to_string(),
            ],
        ),
    );
    let kubectl = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kc.as_str()];
        all.extend_from_slice(args);
        run_in(&ns, Path::new("/usr/bin/kubectl"), &all)
    };
    let ips = wait(
        "two ready web pods and the client",
        Duration::from_secs(90),
        || {
            let pods: Value =
                serde_json::from_slice(&kubectl(&["get", "pods", "-o", "json"]).stdout).ok()?;
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
        },
    )
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(data.join("logs/node-agent.log")).unwrap_or_default();
        panic!("{e:#}\n{}", &log[log.len().saturating_sub(4000)..])
    });
    for ip in &ips {
        let page = ok(
            "kubectl exec client -- wget",
            &kubectl(&[
                "exec",
                "client",
                "--",
                "timeout",
                "5",
                "wget",
                "-qO-",
                &format!("http://{ip}:8080/"),
            ]),
        );
        assert!(
            page.starts_with("Hello from Apiary!\nserved by web-"),
            "{page}"
        );
    }

    // Down: nothing of the node is left.
    drop(_down);
    let links = ip(&["-n", &ns, "-o", "link", "show"]).unwrap();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or_default())
        })
        .collect();
    assert_eq!(names, ["lo", "eth0"], "only the machine's own links remain");
    let tc = apiary_tests::lab::tc_programs(&ns, "eth0").unwrap_or_default();
    assert!(
        tc.is_empty(),
        "no BPF program on the machine's interface: {tc:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.path().display().to_string()),
        "no mount under the data dir is left"
    );
    let procs = Command::new("pgrep")
        .args(["-f", &data_arg])
        .output()
        .unwrap();
    assert!(procs.stdout.is_empty(), "no process of the cluster is left");
    let _ = &mut lab;
}
