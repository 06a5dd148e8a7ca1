//! `apiary label` and `apiary annotate`: set (`k=v`) or remove (`k-`) labels or annotations,
//! as kubectl does, refusing to change an existing value without `--overwrite`.

use std::io::Write;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::{Outcome, Session, client::PatchType, discovery::Target, report::Failures};

/// Which metadata map a command edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Labels,
    Annotations,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Self::Labels => "labels",
            Self::Annotations => "annotations",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Labels => "labeled",
            Self::Annotations => "annotated",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME… KEY=VALUE… KEY-…` or `TYPE/NAME… KEY=VALUE…`.
    #[arg(required = true, num_args = 1..)]
    pub words: Vec<String>,
    /// Replace values that are already set.
    #[arg(long)]
    pub overwrite: bool,
}

/// One requested change: `Some(value)` sets, `None` removes.
type Changes = Vec<(String, Option<String>)>;

/// Splits the command line into the objects and the changes (`k=v`, `k-`).
pub fn parse(words: &[String]) -> anyhow::Result<(Vec<String>, Changes)> {
    let mut objects = Vec::new();
    let mut changes = Vec::new();
    for word in words {
        if let Some((key, value)) = word.split_once('=') {
            if key.is_empty() {
                bail!("invalid change {word:?}: the key is empty");
            }
            changes.push((key.to_owned(), Some(value.to_owned())));
        } else if let Some(key) = word
            .strip_suffix('-')
            .filter(|k| !k.is_empty() && !objects.is_empty())
        {
            changes.push((key.to_owned(), None));
        } else if changes.is_empty() {
            objects.push(word.clone());
        } else {
            bail!("{word:?} comes after a change: give the objects first, then KEY=VALUE or KEY-");
        }
    }
    if changes.is_empty() {
        bail!("at least one KEY=VALUE or KEY- is required");
    }
    Ok((objects, changes))
}

/// The merge patch for `changes` on an object whose map is `current`; errors when a value
/// would change without `overwrite`.
pub fn patch(
    field: Field,
    current: &Value,
    changes: &Changes,
    overwrite: bool,
) -> anyhow::Result<Value> {
    let mut map = Map::new();
    for (key, value) in changes {
        if let Some(value) = value
            && let Some(existing) = current.get(key).and_then(Value::as_str)
            && existing != value
            && !overwrite
        {
            bail!("'{key}' already has a value ({existing}), and --overwrite is false");
        }
        map.insert(
            key.clone(),
            value.as_ref().map_or(Value::Null, |v| json!(v)),
        );
    }
    Ok(json!({ "metadata": { field.key(): map } }))
}

pub async fn run(
    session: &Session,
    field: Field,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let (objects, changes) = parse(&args.words)?;
    let discovery = session.discover().await?;
    let targets = discovery.targets(&objects)?;
    let mut failures = Failures::default();
    for Target { resource, names } in targets {
        if names.is_empty() {
            bail!(
                "give the name of the {} to change",
                resource.kind.to_lowercase()
            );
        }
        for name in names {
            let path = resource.path(Some(&session.namespace), Some(&name));
            let result: anyhow::Result<()> = async {
                let object = session.client.get(&path, &[]).await?;
                let body = patch(
                    field,
                    &object["metadata"][field.key()],
                    &changes,
                    args.overwrite,
                )
                .with_context(|| format!("{} {name:?}", resource.qualified_plural()))?;
                session.client.patch(&path, PatchType::Merge, &body).await?;
                Ok(())
            }
            .await;
            match result {
                Ok(()) => writeln!(out, "{}/{name} {}", resource.qualified_kind(), field.verb())?,
                Err(e) => failures.report(e),
            }
        }
    }
    Ok(Outcome::from(&failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn objects_come_first_then_changes() {
        let (objects, changes) = parse(&words("svc web tier=front old-")).unwrap();
        assert_eq!(objects, ["svc", "web"]);
        assert_eq!(
            changes,
            [("tier".into(), Some("front".into())), ("old".into(), None)]
        );
        assert!(parse(&words("svc web")).is_err());
        assert!(parse(&words("svc web a=b extra")).is_err());
    }

    #[test]
    fn changing_a_value_needs_overwrite_and_removal_is_null() {
        let current = json!({"tier": "back"});
        let changes = vec![("tier".to_owned(), Some("front".to_owned()))];
        assert!(patch(Field::Labels, &current, &changes, false).is_err());
        assert_eq!(
            patch(Field::Labels, &current, &changes, true).unwrap(),
            json!({"metadata": {"labels": {"tier": "front"}}})
        );
        let remove = vec![("tier".to_owned(), None)];
        assert_eq!(
            patch(Field::Annotations, &current, &remove, false).unwrap(),
            json!({"metadata": {"annotations": {"tier": null}}})
        );
    }
}
