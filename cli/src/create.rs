//! `apiary create`: a namespace by name, or the objects of manifests (which must not exist yet).

use std::{io::Write, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{Outcome, Session, apply, manifest, report::Failures};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub what: Option<What>,
    /// Create the objects of a manifest file, a folder of them, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Create a namespace.
    #[command(visible_alias = "ns")]
    Namespace {
        /// Its name.
        name: String,
    },
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let client = &session.client;
    match &args.what {
        Some(What::Namespace { name }) => {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            client.create("/api/v1/namespaces", &namespace).await?;
            writeln!(out, "namespace/{name} created")?;
            Ok(Outcome::Success)
        }
        None if args.files.is_empty() => {
            bail!("give what to create (`apiary create namespace NAME`) or -f FILE")
        }
        None => {
            let documents = manifest::read_all(&args.files)?;
            let discovery = session.discover().await?;
            let mut failures = Failures::default();
            for object in apply::resolve(session, &discovery, documents)? {
                let file = &object.document.file;
                match client
                    .create(&object.collection_path(), &object.document.object)
                    .await
                    .with_context(|| format!("error when creating {file:?}"))
                {
                    Ok(_) => writeln!(out, "{} created", object.display())?,
                    Err(e) => failures.report(e),
                }
            }
            Ok(Outcome::from(&failures))
        }
    }
}
