//! `apiary-shim`: the single-threaded helper that runs one container with libcontainer (see
//! `apiary_runtime::shim`).
//!
//! ```text
//! apiary-shim run  --state-dir DIR --id ID --cgroup-parent PARENT
//! apiary-shim exec --state-dir DIR --id ID [--env K=V]... -- ARGS...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

struct Args {
    state_dir: PathBuf,
    id: String,
    cgroup_parent: String,
    env: Vec<String>,
    command: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        state_dir: PathBuf::new(),
        id: String::new(),
        cgroup_parent: "apiary".into(),
        env: Vec::new(),
        command: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--state-dir" => parsed.state_dir = value("--state-dir")?.into(),
            "--id" => parsed.id = value("--id")?,
            "--cgroup-parent" => parsed.cgroup_parent = value("--cgroup-parent")?,
            "--env" => parsed.env.push(value("--env")?),
            "--" => {
                parsed.command = args.collect();
                break;
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if parsed.state_dir.as_os_str().is_empty() {
        bail!("--state-dir is required");
    }
    apiary_runtime::validate_id(&parsed.id).context("--id")?;
    Ok(parsed)
}

fn main() -> ExitCode {
    // libcontainer's own diagnostics go to the shim log (our stderr); APIARY_SHIM_LOG tunes
    // them. Not RUST_LOG: the agent's setting must not leak into every exec's stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APIARY_SHIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libcgroups=error")),
        )
        .init();
    let mut argv = std::env::args().skip(1);
    let subcommand = argv.next().unwrap_or_default();
    let args = match parse(argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("apiary-shim: {e:#}");
            return ExitCode::from(2);
        }
    };
    match subcommand.as_str() {
        "run" => match apiary_runtime::shim::run(&args.state_dir, &args.id, &args.cgroup_parent) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apiary-shim run {}: {e}", args.id);
                ExitCode::FAILURE
            }
        },
        "exec" => {
            if args.command.is_empty() {
                eprintln!("apiary-shim exec: a command after -- is required");
                return ExitCode::from(2);
            }
            let code =
                apiary_runtime::shim::exec(&args.state_dir, &args.id, args.command, args.env);
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        other => {
            eprintln!("apiary-shim: unknown subcommand {other:?} (run | exec)");
            ExitCode::from(2)
        }
    }
}
