//! `apiary-control-plane`: the API server and the controllers behind it.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "apiary-control-plane",
    version,
    about = "Apiary's control plane"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("the API server is not built yet; see issue 3 (Control plane I)")
}
