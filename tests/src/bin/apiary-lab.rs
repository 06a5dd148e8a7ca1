//! `apiary-lab demo`: the README's quick start (`apiary up`, the demo app, `apiary down`) inside a
//! lab namespace standing in for the machine (see `apiary_tests::demo`).
//!
//! `apiary-lab bench-pods [SECONDS]`: pod-to-pod TCP request/response rates (see `bench_net`).

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => demo(),
        Some("bench-pods") => {
            let seconds = std::env::args()
                .nth(2)
                .map(|s| s.parse::<f64>())
                .transpose()
                .context("seconds per round: expected a number")?
                .unwrap_or(2.0);
            apiary_tests::bench_net::run(seconds, 3)
        }
        _ => bail!("usage: apiary-lab demo | apiary-lab bench-pods [SECONDS_PER_ROUND]"),
    }
}

fn demo() -> anyhow::Result<()> {
    apiary_tests::demo::run()
}
