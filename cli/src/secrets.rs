//! `apiary secrets rotate`: rewrites every Secret of the cluster, so that each is stored again
//! under the first key of the API server's encryption configuration — what `kubectl get
//! secrets -A -o json | kubectl replace -f -` does after a new key is put first. Once it has
//! run, the old key can be removed from the configuration.

use std::io::Write;

use crate::{Outcome, Session, client, report::Failures};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Rewrite every Secret in every namespace under the encryption configuration's first key.
    Rotate,
}

/// Secrets read per list request.
const PAGE: &str = "250";
/// Attempts for one Secret that keeps changing under the rewrite.
const ATTEMPTS: usize = 5;

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let Command::Rotate = args.command;
    let mut failures = Failures::default();
    let mut rewritten = 0usize;
    let mut continue_token = String::new();
    loop {
        let mut query = vec![("limit", PAGE)];
        if !continue_token.is_empty() {
            query.push(("continue", continue_token.as_str()));
        }
        let page = session.client.get("/api/v1/secrets", &query).await?;
        for secret in page["items"].as_array().into_iter().flatten() {
            let namespace = secret["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = secret["metadata"]["name"].as_str().unwrap_or_default();
            match rewrite(&session.client, namespace, name, secret.clone()).await {
                Ok(()) => {
                    rewritten += 1;
                    writeln!(out, "secret/{name} replaced (namespace {namespace})")?;
                }
                Err(e) => failures.report(e.into()),
            }
        }
        continue_token = page["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if continue_token.is_empty() {
            break;
        }
    }
    writeln!(
        out,
        "{rewritten} secrets rewritten under the encryption configuration's first key"
    )?;
    Ok(Outcome::from(&failures))
}

/// Replaces one Secret with itself (the API server encrypts what it writes with its first key);
/// a Secret changed meanwhile is read again and replaced as it is now.
async fn rewrite(
    client: &client::Client,
    namespace: &str,
    name: &str,
    mut secret: serde_json::Value,
) -> Result<(), client::Error> {
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    for _ in 1..ATTEMPTS {
        match client.replace(&path, &secret).await {
            Err(e) if e.status().is_some_and(|s| s.code == 409) => {
                secret = client.get(&path, &[]).await?;
            }
            // Deleted since the list: nothing left to rewrite.
            Err(e) if e.is_not_found() => return Ok(()),
            other => return other.map(drop),
        }
    }
    client.replace(&path, &secret).await.map(drop)
}
