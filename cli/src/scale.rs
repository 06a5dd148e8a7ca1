//! `apiary scale`: set the replica count through the `scale` subresource.

use std::io::Write;

use anyhow::bail;
use serde_json::json;

use crate::{Outcome, Session, client::PatchType, discovery::Target, report::Failures};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME…` or `TYPE/NAME…` (deployments, replicasets, statefulsets).
    #[arg(required = true, num_args = 1..)]
    pub objects: Vec<String>,
    /// The new replica count.
    #[arg(long)]
    pub replicas: u32,
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let discovery = session.discover().await?;
    let mut failures = Failures::default();
    for Target { resource, names } in discovery.targets(&args.objects)? {
        if names.is_empty() {
            bail!(
                "give the name of the {} to scale",
                resource.kind.to_lowercase()
            );
        }
        for name in names {
            let path = format!(
                "{}/scale",
                resource.path(Some(&session.namespace), Some(&name))
            );
            let body = json!({ "spec": { "replicas": args.replicas } });
            match session.client.patch(&path, PatchType::Merge, &body).await {
                Ok(_) => writeln!(out, "{}/{name} scaled", resource.qualified_kind())?,
                Err(e) => failures.report(e.into()),
            }
        }
    }
    Ok(Outcome::from(&failures))
}
