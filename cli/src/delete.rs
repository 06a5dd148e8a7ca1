//! `apiary delete`: delete objects named on the command line or in manifests, then wait until
//! they are gone, as `kubectl delete` (with its default `--wait`) does.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use serde_json::{Value, json};

use crate::{
    Outcome, Session, apply, client::Client, discovery::ApiResource, manifest, report::Failures,
};

/// How often a deleted object is looked for while waiting for it to go.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME…` or `TYPE/NAME…` (or `TYPE` with `-l` or `--all`).
    #[arg(value_name = "TYPE[/NAME]")]
    pub args: Vec<String>,
    /// The objects of a manifest file, a folder of them, or `-` for standard input; may repeat.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Delete the objects of TYPE with these labels.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Delete every object of TYPE in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Say nothing of objects that do not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Wait until the objects are gone (`--wait=false` not to).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    pub wait: bool,
    /// How long to wait, e.g. `60s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `90`, `90s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60s or 2m"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?} is not a duration like 60s or 2m")),
    };
    Ok(Duration::from_secs(seconds))
}

/// One object to delete.
#[derive(Debug)]
struct Victim<'a> {
    resource: &'a ApiResource,
    namespace: Option<String>,
    name: String,
}

impl Victim<'_> {
    fn path(&self) -> String {
        self.resource
            .path(self.namespace.as_deref(), Some(&self.name))
    }
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    if !args.files.is_empty() && !args.args.is_empty() {
        bail!(
            "resource names cannot be given with -f: name the objects in the manifests or on the command line"
        );
    }
    if args.files.is_empty() && args.args.is_empty() {
        bail!("you must provide one or more resources by argument or filename");
    }
    let documents = if args.files.is_empty() {
        Vec::new()
    } else {
        manifest::read_all(&args.files)?
    };
    let discovery = session.discover().await?;
    let client = &session.client;
    let mut victims = Vec::new();
    if documents.is_empty() {
        for target in discovery.targets(&args.args)? {
            let resource = target.resource;
            let namespace = resource.namespaced.then(|| session.namespace.clone());
            if target.names.is_empty() {
                if args.selector.is_none() && !args.all {
                    bail!(
                        "resource(s) were provided, but no name was specified: give names, -l SELECTOR or --all"
                    );
                }
                let mut query = Vec::new();
                if let Some(selector) = &args.selector {
                    query.push(("labelSelector", selector.as_str()));
                }
                let list = client
                    .get(&resource.path(namespace.as_deref(), None), &query)
                    .await?;
                for item in list["items"].as_array().into_iter().flatten() {
                    victims.push(Victim {
                        resource,
                        namespace: namespace.clone(),
                        name: item["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    });
                }
            }
            for name in target.names {
                victims.push(Victim {
                    resource,
                    namespace: namespace.clone(),
                    name,
                });
            }
        }
    } else {
        for object in apply::resolve(session, &discovery, documents)? {
            victims.push(Victim {
                resource: object.resource,
                name: object.name().to_owned(),
                namespace: object.namespace,
            });
        }
    }
    if victims.is_empty() && !args.ignore_not_found {
        writeln!(out, "No resources found")?;
    }
    let mut failures = Failures::default();
    let mut deleted = Vec::new();
    let options =
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
    for victim in &victims {
        match client.delete(&victim.path(), &options).await {
            Ok(object) => {
                writeln!(
                    out,
                    "{} {:?} deleted",
                    victim.resource.qualified_kind(),
                    victim.name
                )?;
                out.flush()?;
                let uid = object["metadata"]["uid"].as_str().map(str::to_owned);
                deleted.push((victim, uid));
            }
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => failures.report(e.into()),
        }
    }
    if args.wait {
        let deadline = Instant::now() + args.timeout;
        for (victim, uid) in deleted {
            if let Err(e) = wait_gone(client, victim, uid.as_deref(), deadline).await {
                failures.report(e);
            }
        }
    }
    Ok(Outcome::from(&failures))
}

/// Waits until `victim` (the object with `uid`, if known) no longer exists.
async fn wait_gone(
    client: &Client,
    victim: &Victim<'_>,
    uid: Option<&str>,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        match client.get(&victim.path(), &[]).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
            // Deleted, and another object of the same name made since.
            Ok(object) if is_other(&object, uid) => return Ok(()),
            Ok(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "timed out waiting for the condition on {}/{}",
                victim.resource.qualified_plural(),
                victim.name
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn is_other(object: &Value, uid: Option<&str>) -> bool {
    match (object["metadata"]["uid"].as_str(), uid) {
        (Some(now), Some(deleted)) => now != deleted,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_kubectl_flags() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn a_new_object_of_the_same_name_counts_as_gone() {
        let object = json!({"metadata": {"uid": "b"}});
        assert!(is_other(&object, Some("a")));
        assert!(!is_other(&object, Some("b")));
        assert!(!is_other(&object, None));
    }
}
