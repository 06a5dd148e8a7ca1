//! `cargo xtask test` (the whole suite, as CI runs it) and `cargo xtask clippy`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::{setup, shell};

/// The packages whose tests need no root: all but the BPF programs and the privileged tests.
const NO_ROOT_PACKAGES: [&str; 5] = [
    "--workspace",
    "--exclude",
    "apiary-ebpf",
    "--exclude",
    "apiary-tests",
];

/// Set to make privileged tests fail instead of skipping when the capability is missing.
const REQUIRE_PRIVILEGED: &str = "APIARY_REQUIRE_PRIVILEGED";

pub fn run() -> anyhow::Result<()> {
    let mut phases = Phases::default();
    let result = (|| {
        phases.time("setup", setup::run)?;
        phases.time("fmt", || shell::cargo(&["fmt", "--all", "--check"]))?;
        phases.time("protobuf table up to date", || {
            crate::protobuf::generate(true)
        })?;
        phases.time("clippy (host)", clippy_host)?;
        phases.time("clippy (ebpf)", clippy_ebpf)?;
        phases.time("load/unload", crate::ebpf::load_unload_smoke)?;
        phases.time("build", || {
            // The CLI's end-to-end tests run the control plane binary.
            shell::cargo(&["build", "--workspace", "--exclude", "apiary-ebpf"])
        })?;
        phases.time("tests (no root)", || {
            shell::cargo(&[&["test"], NO_ROOT_PACKAGES.as_slice()].concat())
        })?;
        phases.time("chaos (bounded)", || chaos(true))?;
        phases.time("faults (bounded)", || faults(true))?;
        phases.time("fuzz (15 s per target, dev build)", || {
            crate::fuzz::run(&crate::fuzz::FuzzArgs {
                seconds: 15,
                targets: Vec::new(),
                dev: true,
            })
        })?;
        phases.time("privileged tests", || {
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.args(["test", "--package", "apiary-tests"]);
            // In CI nothing may be skipped: a missing capability is a failure there.
            if std::env::var_os("CI").is_some() {
                cmd.env(REQUIRE_PRIVILEGED, "1");
            }
            shell::run(&mut cmd)
        })
    })();
    phases.print();
    if result.is_err() {
        report_disk();
    }
    result
}

/// A compiler that dies mid-build on a fresh machine is most often out of disk: say how full it was.
fn report_disk() {
    let target = shell::workspace_root().join("target");
    if let Some(df) = shell::output(Command::new("df").arg("-h").arg(&target)) {
        eprintln!("disk at failure:\n{df}");
    }
}

/// `cargo xtask chaos`: hostile clients against the API server (`control-plane/benches/
/// chaos.rs`). `quick`: CI's bounded run, on the debug build the tests use; otherwise the full
/// run on a release build.
pub fn chaos(quick: bool) -> anyhow::Result<()> {
    control_plane_bench("chaos", quick)
}

/// `cargo xtask faults`: an HA control plane and a lab cluster on it losing parts under load,
/// and the embedded store's disk filling up (`tests/src/faults/`, run by `apiary-lab faults`;
/// needs root). `quick`: CI's bounded run, on the debug build the tests use; otherwise the full
/// run on a release build. Writes target/bench/faults.json.
pub fn faults(quick: bool) -> anyhow::Result<()> {
    let root = shell::output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0");
    if !root {
        // As the privileged tests: skipped on a developer's machine, a failure in CI.
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "cargo xtask faults needs root (network namespaces, BPF, a tmpfs)"
        );
        eprintln!("faults: skipped (needs root)");
        return Ok(());
    }
    let profile = if quick {
        shell::cargo(&["build", "--workspace", "--exclude", "apiary-ebpf"])?;
        "debug"
    } else {
        crate::build_lab_release()?;
        "release"
    };
    let target = crate::target_dir();
    let mut command = Command::new(target.join(profile).join("apiary-lab"));
    command
        .arg("faults")
        .arg("--json")
        .arg(target.join("bench/faults.json"));
    if quick {
        command.arg("--quick");
    }
    shell::run(&mut command)
}

/// Runs the control plane's bench `name`: `--quick` on the debug build, or in full on a release
/// build.
fn control_plane_bench(name: &str, quick: bool) -> anyhow::Result<()> {
    if quick {
        // Selected as the no-root tests select the workspace, so that it builds with the same
        // features and reuses their build: `-p apiary-control-plane` alone resolves other
        // features for the shared dependencies and rebuilt half of them (4.7 minutes in CI).
        shell::cargo(
            &[
                &["test"],
                NO_ROOT_PACKAGES.as_slice(),
                &["--bench", name, "--", "--quick"],
            ]
            .concat(),
        )
    } else {
        shell::cargo(&["bench", "-p", "apiary-control-plane", "--bench", name])
    }
}

pub fn clippy() -> anyhow::Result<()> {
    clippy_host()?;
    clippy_ebpf()
}

fn clippy_host() -> anyhow::Result<()> {
    shell::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])
}

fn clippy_ebpf() -> anyhow::Result<()> {
    shell::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "apiary-ebpf",
            ])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )
}

/// How long each phase took, printed as a table at the end (also after a failure).
#[derive(Default)]
struct Phases {
    done: Vec<(&'static str, Duration, bool)>,
}

impl Phases {
    fn time(
        &mut self,
        name: &'static str,
        phase: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        eprintln!("==> {name}");
        let started = Instant::now();
        let result = phase();
        self.done.push((name, started.elapsed(), result.is_ok()));
        result
    }

    fn print(&self) {
        println!("\n{:<18} {:>9}  RESULT", "PHASE", "SECONDS");
        let mut total = Duration::ZERO;
        for (name, took, ok) in &self.done {
            total += *took;
            let result = if *ok { "ok" } else { "FAILED" };
            println!("{name:<18} {:>9.1}  {result}", took.as_secs_f64());
        }
        println!("{:<18} {:>9.1}", "total", total.as_secs_f64());
    }
}
