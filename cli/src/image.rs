//! `apiary image`: the node's local image store (import, ls, rm, pull, push), no cluster needed.

use std::{collections::HashMap, io::Write, path::PathBuf};

use anyhow::Context as _;
use apiary_images::{ImageStore, PullOptions, PullProgress};

use crate::{Outcome, table::Table};

/// Where the node agent keeps its images.
const DEFAULT_ROOT: &str = "/var/lib/apiary/images";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image store's directory.
    #[arg(long, global = true, env = "APIARY_IMAGE_ROOT", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Import an OCI image layout tar or a `docker save` tar.
    Import { file: PathBuf },
    /// List the images.
    Ls {
        /// `json`, else a table.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
    /// Remove images by reference (or manifest digest); unused layers go with them.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Pull an image (linux/amd64) from a registry.
    Pull {
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Push a local image to a registry, as TARGET (default: the same reference).
    Push {
        reference: String,
        target: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Debug, clap::Args)]
struct RegistryArgs {
    /// A registry (`HOST:PORT`) to reach over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// More certificate authorities to trust (PEM), besides the system's.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    fn options(&self) -> anyhow::Result<PullOptions> {
        let extra_ca_pem = match &self.ca_file {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?)
            }
            None => None,
        };
        Ok(PullOptions {
            insecure_registries: self.insecure_registries.clone(),
            extra_ca_pem,
        })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Json,
}

pub async fn run(args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let store = ImageStore::open(&args.root)
        .with_context(|| format!("opening the image store at {}", args.root.display()))?;
    match &args.command {
        Command::Import { file } => {
            let imported = store.import(file)?;
            for image in imported {
                writeln!(out, "imported {} ({})", image.reference, image.digest)?;
            }
        }
        Command::Ls { output } => {
            let images = store.list()?;
            match output {
                Some(Format::Json) => {
                    serde_json::to_writer_pretty(&mut *out, &images)?;
                    writeln!(out)?;
                }
                None => {
                    let table = Table {
                        headers: ["REFERENCE", "DIGEST", "SIZE", "CREATED"]
                            .map(str::to_owned)
                            .to_vec(),
                        rows: images
                            .iter()
                            .map(|i| {
                                vec![
                                    i.reference.clone(),
                                    short_digest(&i.digest),
                                    human_size(i.size),
                                    i.created.clone().unwrap_or_else(|| "<unknown>".to_owned()),
                                ]
                            })
                            .collect(),
                    };
                    table.write(out, false)?;
                }
            }
        }
        Command::Rm { references } => {
            let mut failures = crate::report::Failures::default();
            for reference in references {
                match store.remove(reference) {
                    Ok(()) => writeln!(out, "removed {reference}")?,
                    Err(e) => failures.report(anyhow::Error::new(e)),
                }
            }
            return Ok(Outcome::from(&failures));
        }
        Command::Pull {
            reference,
            registry,
        } => {
            let bar = Progress::new();
            let mut report = |event| bar.update(event);
            let image = store
                .pull(reference, &registry.options()?, &mut report)
                .await?;
            bar.finish();
            writeln!(out, "pulled {} ({})", image.reference, image.digest)?;
        }
        Command::Push {
            reference,
            target,
            registry,
        } => {
            let target = target.as_deref().unwrap_or(reference);
            let digest = store.push(reference, target, &registry.options()?).await?;
            writeln!(out, "pushed {target} ({digest})")?;
        }
    }
    Ok(Outcome::Success)
}

/// A byte progress bar over all layers of a pull.
struct Progress {
    bar: indicatif::ProgressBar,
    /// Bytes so far of each layer.
    layers: std::sync::Mutex<HashMap<String, u64>>,
}

impl Progress {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message("resolving");
        Self {
            bar,
            layers: std::sync::Mutex::default(),
        }
    }

    fn update(&self, event: PullProgress) {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            PullProgress::Resolved {
                digest,
                layers: count,
                total_bytes,
            } => {
                self.bar.set_length(total_bytes);
                self.bar
                    .set_message(format!("{} ({count} layers)", short_digest(&digest)));
            }
            PullProgress::Layer {
                digest, downloaded, ..
            } => {
                layers.insert(digest, downloaded);
                self.bar.set_position(layers.values().sum());
            }
            PullProgress::LayerDone { digest, cached } => {
                if cached {
                    self.bar
                        .println(format!("{}: already present", short_digest(&digest)));
                } else {
                    self.bar
                        .println(format!("{}: pulled", short_digest(&digest)));
                }
            }
            PullProgress::Done { .. } => self.bar.set_message("done"),
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `sha256:0123456789ab` — as `docker images` shortens IDs.
fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{size:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_043_456), "1.0MB");
        assert_eq!(human_size(2_500_000_000), "2.5GB");
    }

    #[test]
    fn digests_are_shortened_to_twelve_hex_digits() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&digest), "sha256:abababababab");
    }
}
