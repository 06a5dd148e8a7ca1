//! `apiary apply -f`: create what is missing, patch what differs, three-way like kubectl's
//! client-side apply, remembering each manifest in the `last-applied-configuration` annotation.

use std::{io::Write, path::PathBuf};

use anyhow::Context as _;
use serde_json::{Map, Value};

use crate::{
    Outcome, Session,
    client::PatchType,
    discovery::{ApiResource, Discovery},
    manifest::{self, Document},
    patch,
    report::Failures,
};

/// Where kubectl (and `apiary`) keep the configuration applied last.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A manifest file, a folder of them, or `-` for standard input; may repeat.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,
}

/// A manifest's object, with the type and namespace it goes to.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub document: Document,
    pub resource: &'a ApiResource,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
}

impl Resolved<'_> {
    pub fn name(&self) -> &str {
        self.document.name()
    }

    pub fn path(&self) -> String {
        self.resource
            .path(self.namespace.as_deref(), Some(self.name()))
    }

    pub fn collection_path(&self) -> String {
        self.resource.path(self.namespace.as_deref(), None)
    }

    /// `deployment.apps/web`.
    pub fn display(&self) -> String {
        format!("{}/{}", self.resource.qualified_kind(), self.name())
    }
}

/// Reads the manifests and finds each object's type and namespace, so that nothing is sent
/// unless every document is usable.
pub fn resolve<'a>(
    session: &Session,
    discovery: &'a Discovery,
    documents: Vec<Document>,
) -> anyhow::Result<Vec<Resolved<'a>>> {
    documents
        .into_iter()
        .map(|mut document| {
            let resource = discovery
                .for_kind(document.api_version(), document.kind())
                .map_err(|e| document.invalid(e.to_string()))?;
            let namespace = if resource.namespaced {
                let ns = match document.namespace() {
                    Some(ns) if session.namespace_from_flag && ns != session.namespace => {
                        return Err(document
                            .invalid(format!(
                                "the namespace from the provided object {ns:?} does not match the namespace {:?}; pass '--namespace={ns}' or leave it out",
                                session.namespace
                            ))
                            .into());
                    }
                    Some(ns) => ns.to_owned(),
                    None => session.namespace.clone(),
                };
                document.object["metadata"]["namespace"] = Value::String(ns.clone());
                Some(ns)
            } else {
                if let Some(metadata) = document.object["metadata"].as_object_mut() {
                    metadata.remove("namespace");
                }
                None
            };
            Ok(Resolved {
                document,
                resource,
                namespace,
            })
        })
        .collect()
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let documents = manifest::read_all(&args.files)?;
    let discovery = session.discover().await?;
    let objects = resolve(session, &discovery, documents)?;
    let mut failures = Failures::default();
    for object in &objects {
        match apply_one(session, object).await {
            Ok(result) => writeln!(out, "{} {result}", object.display())?,
            Err(e) => failures.report(e),
        }
    }
    Ok(Outcome::from(&failures))
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        })
    }
}

async fn apply_one(session: &Session, object: &Resolved<'_>) -> anyhow::Result<Applied> {
    let file = &object.document.file;
    let modified = with_last_applied(&object.document.object);
    let current = match session.client.get(&object.path(), &[]).await {
        Ok(current) => current,
        Err(e) if e.is_not_found() => {
            session
                .client
                .create(&object.collection_path(), &modified)
                .await
                .with_context(|| format!("error when creating {file:?}"))?;
            return Ok(Applied::Created);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "error when retrieving current configuration of {} from {file:?}",
                    object.display()
                )
            });
        }
    };
    let original = last_applied(&current);
    let patch = patch::three_way(original.as_ref(), &modified, &current);
    if patch.as_object().is_some_and(Map::is_empty) {
        return Ok(Applied::Unchanged);
    }
    session
        .client
        .patch(&object.path(), PatchType::Strategic, &patch)
        .await
        .with_context(|| format!("error when patching {file:?}"))?;
    Ok(Applied::Configured)
}

/// The manifest with the annotation that records it, as kubectl writes it: the manifest without
/// that annotation, as compact JSON with sorted keys and a final newline.
pub fn with_last_applied(manifest: &Value) -> Value {
    let mut object = manifest.clone();
    let metadata = object["metadata"]
        .as_object_mut()
        .expect("manifests are checked to have metadata");
    // Like kubectl, record `annotations: {}` rather than nothing, so that the two record the
    // same manifest identically and each sees the other's apply as unchanged.
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let mut recorded = serde_json::to_string(&object).expect("a JSON value always serializes");
    recorded.push('\n');
    object["metadata"]["annotations"][LAST_APPLIED] = Value::String(recorded);
    object
}

/// The configuration recorded on `current` by the last apply, if any.
pub fn last_applied(current: &Value) -> Option<Value> {
    current["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_annotation_records_the_manifest_without_itself() {
        let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {LAST_APPLIED: "old", "a": "b"}}, "data": {"k": "v"}});
        let modified = with_last_applied(&manifest);
        let recorded = last_applied(&modified).unwrap();
        assert_eq!(
            recorded,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "annotations": {"a": "b"}}, "data": {"k": "v"}})
        );
        assert!(
            modified["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap()
                .ends_with("}\n")
        );
        let bare = with_last_applied(&json!({"metadata": {"name": "c"}}));
        assert_eq!(
            bare["metadata"]["annotations"][LAST_APPLIED],
            "{\"metadata\":{\"annotations\":{},\"name\":\"c\"}}\n"
        );
    }

    #[test]
    fn reapplying_the_same_manifest_is_unchanged_and_dropping_a_label_removes_it() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "labels": {"app": "x", "tier": "y"}}});
        let mut current = with_last_applied(&first);
        current["metadata"]["uid"] = json!("u");
        current["metadata"]["resourceVersion"] = json!("5");
        let again = with_last_applied(&first);
        assert_eq!(
            patch::three_way(last_applied(&current).as_ref(), &again, &current),
            json!({})
        );

        let mut second = first.clone();
        second["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("tier");
        let modified = with_last_applied(&second);
        let patch = patch::three_way(last_applied(&current).as_ref(), &modified, &current);
        assert_eq!(patch["metadata"]["labels"], json!({"tier": null}));
        assert_eq!(
            patch["metadata"]["annotations"][LAST_APPLIED],
            modified["metadata"]["annotations"][LAST_APPLIED]
        );
    }
}
