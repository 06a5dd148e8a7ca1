//! `apiary`: the command line for Apiary clusters.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "apiary", version, about = "Drive an Apiary cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the client version.
    Version,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Version => println!("apiary {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
