//! `cargo xtask fuzz [--seconds N] [TARGET…]`: runs the cargo-fuzz targets of `fuzz/` (the
//! parsers that read what clients and registries send) for a bounded time each, on the corpus
//! kept in the repo (`fuzz/corpus/<target>`, which the runs grow). A crash fails the run and
//! leaves its input under `fuzz/artifacts/<target>/`.

use std::process::Command;

use anyhow::Context as _;

use crate::shell;

/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "label_selector",
    "field_selector",
    "quantity",
    "strategic_merge",
    "decode_body",
    "image_reference",
    "protobuf_body",
];

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run [default: all].
    pub targets: Vec<String>,
    /// Build the targets unoptimized: minutes instead of a quarter of an hour to build on two
    /// cores (the release build instruments and optimizes the parsers' whole dependency tree),
    /// for fewer runs per second. The corpus is replayed all the same: CI's bounded run.
    #[arg(long)]
    pub dev: bool,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        anyhow::bail!(
            "no fuzz target {unknown:?}; there are: {}",
            TARGETS.join(", ")
        );
    }
    let dir = shell::workspace_root().join("fuzz");
    for target in targets {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| corpus.display().to_string())?;
        shell::run(
            Command::new("cargo")
                .current_dir(&dir)
                // The sanitizers need nightly; the fuzz crate is outside the workspace.
                .env("RUSTUP_TOOLCHAIN", "nightly")
                .args([
                    "fuzz",
                    "run",
                    if args.dev { "--dev" } else { "--release" },
                    target,
                ])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds))
                // A leak or runaway allocation is a finding too, not a hung run.
                .args(["-rss_limit_mb=2048", "-timeout=10"]),
        )
        .with_context(|| format!("fuzz target {target}"))?;
    }
    Ok(())
}
