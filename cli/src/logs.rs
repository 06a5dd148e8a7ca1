//! `apiary logs`: a container's log through the API server (`pods/{name}/log`), written as it
//! arrives so that `-f` follows.

use std::io::Write;

use crate::{Outcome, Session};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (`NAME` or `pod/NAME`).
    pub pod: String,
    /// The container (default: the pod's only one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming as the container writes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous instance of a restarted container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Prefix each line with its time (RFC 3339).
    #[arg(long)]
    pub timestamps: bool,
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let pod = pod_name(&args.pod)?;
    let path = format!("/api/v1/namespaces/{}/pods/{pod}/log", session.namespace);
    let tail = args.tail.map(|n| n.to_string());
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(container) = &args.container {
        query.push(("container", container));
    }
    if let Some(tail) = &tail {
        query.push(("tailLines", tail));
    }
    for (flag, name) in [
        (args.follow, "follow"),
        (args.previous, "previous"),
        (args.timestamps, "timestamps"),
    ] {
        if flag {
            query.push((name, "true"));
        }
    }
    let mut response = session.client.stream(&path, &query).await?;
    while let Some(chunk) = response.chunk().await? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(Outcome::Success)
}

/// `NAME`, `pod/NAME` or `pods/NAME`: logs are a pod's.
pub fn pod_name(arg: &str) -> anyhow::Result<&str> {
    let name = match arg.split_once('/') {
        None => arg,
        Some(("pod" | "pods" | "po", name)) => name,
        Some((kind, _)) => {
            anyhow::bail!("POD: only pods have logs and exec, not {kind:?} (give NAME or pod/NAME)")
        }
    };
    if name.is_empty() {
        anyhow::bail!("POD: a pod name is required");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_plainly_or_with_their_type() {
        assert_eq!(pod_name("web").unwrap(), "web");
        assert_eq!(pod_name("pod/web").unwrap(), "web");
        assert!(
            pod_name("deploy/web")
                .unwrap_err()
                .to_string()
                .starts_with("POD: only pods")
        );
        assert!(pod_name("pod/").is_err());
    }
}
