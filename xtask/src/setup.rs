//! `cargo xtask setup`: make a fresh machine of this kind able to build, load and test Apiary.
//! Every step checks first, so a second run is fast.

use std::{process::Command, time::Instant};

use anyhow::Context as _;

use crate::shell;

/// Debian packages the build and the tests need.
const PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22, the LLVM of the nightly toolchain.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // libcontainer (youki) with seccomp.
    "libseccomp-dev",
    "pkg-config",
    // Test images: a static busybox with sh, httpd, nc, wget.
    "busybox-static",
    "docker-registry", // the image store's pull test pushes to and pulls from one on loopback
    // The etcd backend's tests run a real etcd.
    "etcd-server",
    // etcd-client and the agent protocol compile .proto files; etcd-client's import
    // google/protobuf's well-known types, which are in libprotobuf-dev (only a Recommends of
    // protobuf-compiler, so `--no-install-recommends` leaves them out).
    "protobuf-compiler",
    "libprotobuf-dev",
    // Labs and debugging.
    "bpftool",
    "iproute2",
];

/// The official Kubernetes Python client, pinned: the API tests' second real client (beside
/// kubectl), from PyPI.
const PYTHON_CLIENT: &str = "kubernetes==37.0.3";

/// bpf-linker, pinned: a new release can change the objects it produces.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    python_client()?;
    println!("setup: ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            shell::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|status| status.trim() != "install ok installed")
        })
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = shell::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list) if list.lines().any(|c| c.starts_with("rust-src")) => {
            println!("setup: nightly rust-src present");
            Ok(())
        }
        Some(_) => shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        None => shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy,rustfmt",
        ])),
    }
}

fn bpf_linker() -> anyhow::Result<()> {
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    if shell::output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.trim() == want)
    {
        println!("setup: {want} present");
        return Ok(());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    shell::run(
        Command::new("cargo")
            .env("PATH", format!("{LLVM_PREFIX}/bin:{path}"))
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            // Build with the image's stable toolchain, whatever directory we are in.
            .env("RUSTUP_TOOLCHAIN", "stable")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("installing bpf-linker")
}

/// cargo-fuzz, pinned: `cargo xtask fuzz` and the test suite run the fuzz targets with it.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz() -> anyhow::Result<()> {
    let want = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if shell::output(Command::new("cargo-fuzz").arg("--version")).is_some_and(|v| v.trim() == want)
    {
        println!("setup: {want} present");
        return Ok(());
    }
    shell::run(
        Command::new("cargo")
            .env("RUSTUP_TOOLCHAIN", "stable")
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ]),
    )
    .context("installing cargo-fuzz")
}

fn python_client() -> anyhow::Result<()> {
    let (_, version) = PYTHON_CLIENT.split_once("==").expect("pinned with ==");
    let installed = shell::output(
        Command::new("python3").args(["-c", "import kubernetes; print(kubernetes.__version__)"]),
    );
    if installed.as_deref().map(str::trim) == Some(version) {
        println!("setup: python {PYTHON_CLIENT} present");
        return Ok(());
    }
    shell::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(PYTHON_CLIENT),
    )
    .context("installing the Kubernetes Python client")
}

fn bpffs() -> anyhow::Result<()> {
    let fs_type = shell::output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]));
    if fs_type.as_deref().map(str::trim) == Some("bpf_fs") {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    shell::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
