//! Custom resources: the kinds CustomResourceDefinitions add, served like built-ins from the
//! moment their CRD is written, with the schema, printer columns and subresources of each
//! version (apiextensions-apiserver's `crdHandler`).
//!
//! The rest of the server names a resource by `&'static ResourceType`; a custom version's is
//! interned: leaked once per distinct set of names and served subresources, and reused when
//! the same CRD is written again. What changes with every CRD edit (the schema, the columns)
//! lives in [`CustomVersion`] behind an `Arc` and is replaced in place.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use apiary_api::{
    apiextensions_v1::{CustomResourceDefinition, PrinterColumn, ScaleSubresource},
    resource::{self, ResourceInfo, Subresource},
};
use serde_json::{Value, json};

use super::error::ApiError;

/// The finalizer a CRD carries until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One served version of a custom resource.
#[derive(Debug)]
pub struct CustomVersion {
    pub info: &'static ResourceInfo,
    /// The CRD's name (`<plural>.<group>`).
    pub crd: String,
    pub schema: Value,
    pub columns: Vec<PrinterColumn>,
    pub scale: Option<ScaleSubresource>,
    pub has_status: bool,
}

type Key = (String, String, String);

/// The custom resource versions this API server serves, by group, version and plural.
#[derive(Debug, Default)]
pub struct CustomResources {
    versions: RwLock<HashMap<Key, Arc<CustomVersion>>>,
}

impl CustomResources {
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<CustomVersion>> {
        let key = (group.to_owned(), version.to_owned(), plural.to_owned());
        self.read().get(&key).cloned()
    }

    /// The custom version `info` is, if it is one.
    pub fn of(&self, info: &ResourceInfo) -> Option<Arc<CustomVersion>> {
        self.get(info.group, info.version, info.plural)
            .filter(|v| std::ptr::eq(v.info, info) || *v.info == *info)
    }

    /// Every served custom version with its schema, by group, version and plural.
    pub fn versions(&self) -> Vec<Arc<CustomVersion>> {
        let mut versions: Vec<Arc<CustomVersion>> = self.read().values().cloned().collect();
        versions.sort_by_key(|v| (v.info.group, v.info.version, v.info.plural));
        versions
    }

    /// Every served custom version.
    pub fn all(&self) -> Vec<&'static ResourceInfo> {
        let mut all: Vec<&'static ResourceInfo> = self.read().values().map(|v| v.info).collect();
        all.sort_by_key(|r| (r.group, resource::version_priority(r.version), r.plural));
        all
    }

    /// Serves what `crd` defines (its served versions), replacing what it defined before.
    pub fn define(&self, crd: &CustomResourceDefinition) {
        let name = crd.metadata.name.clone();
        let spec = &crd.spec;
        let mut served = HashMap::new();
        for version in spec.versions.iter().filter(|v| v.served) {
            let mut subresources = Vec::new();
            if version.has_status() {
                subresources.push(resource::status_of(intern_str(&spec.names.kind)));
            }
            if version.scale().is_some() {
                subresources.push(resource::SCALE_SUBRESOURCE);
            }
            let info = intern(ResourceInfo {
                group: intern_str(&spec.group),
                version: intern_str(&version.name),
                kind: intern_str(&spec.names.kind),
                plural: intern_str(&spec.names.plural),
                singular: intern_str(&spec.singular()),
                short_names: intern_strs(&spec.names.short_names),
                namespaced: spec.scope == "Namespaced",
                verbs: resource::ALL_VERBS,
                categories: intern_strs(&spec.names.categories),
                subresources: intern_subresources(subresources),
                field_selectors: &[],
            });
            let key = (
                spec.group.clone(),
                version.name.clone(),
                spec.names.plural.clone(),
            );
            let columns = version.additional_printer_columns.clone();
            served.insert(
                key,
                Arc::new(CustomVersion {
                    info,
                    crd: name.clone(),
                    schema: version.schema().cloned().unwrap_or_else(|| json!({})),
                    columns,
                    scale: version.scale().cloned(),
                    has_status: version.has_status(),
                }),
            );
        }
        let mut versions = self.write();
        versions.retain(|_, v| v.crd != name);
        versions.extend(served);
    }

    /// Stops serving what the CRD called `name` defined.
    pub fn forget(&self, name: &str) {
        self.write().retain(|_, v| v.crd != name);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<CustomVersion>>> {
        self.versions.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<CustomVersion>>> {
        self.versions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn intern_str(s: &str) -> &'static str {
    static STRINGS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut strings = STRINGS.lock().unwrap_or_else(PoisonError::into_inner);
    let strings = strings.get_or_insert_with(HashSet::new);
    if let Some(interned) = strings.get(s) {
        return interned;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    strings.insert(leaked);
    leaked
}

fn intern_strs(list: &[String]) -> &'static [&'static str] {
    if list.is_empty() {
        return &[];
    }
    let interned: Vec<&'static str> = list.iter().map(|s| intern_str(s)).collect();
    static LISTS: Mutex<Vec<&'static [&'static str]>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = lists.iter().find(|l| **l == interned.as_slice()) {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(interned.into_boxed_slice());
    lists.push(leaked);
    leaked
}

fn intern_subresources(list: Vec<Subresource>) -> &'static [Subresource] {
    if list.is_empty() {
        return &[];
    }
    static LISTS: Mutex<Vec<&'static [Subresource]>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = lists.iter().find(|l| **l == list.as_slice()) {
        return found;
    }
    let leaked: &'static [Subresource] = Box::leak(list.into_boxed_slice());
    lists.push(leaked);
    leaked
}

fn intern(info: ResourceInfo) -> &'static ResourceInfo {
    static INFOS: Mutex<Vec<&'static ResourceInfo>> = Mutex::new(Vec::new());
    let mut infos = INFOS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = infos.iter().find(|i| ***i == info) {
        return found;
    }
    let leaked: &'static ResourceInfo = Box::leak(Box::new(info));
    infos.push(leaked);
    leaked
}

/// Why a CRD cannot be served beside the built-in kinds: its group is one Apiary serves itself,
/// or its plural is a built-in plural (the server still tells some built-in kinds apart by
/// plural alone).
pub fn conflict_with_built_ins(crd: &CustomResourceDefinition) -> Option<String> {
    let spec = &crd.spec;
    if resource::RESOURCES.iter().any(|r| r.group == spec.group) {
        return Some(format!(
            "the group {:?} is served by the API server itself",
            spec.group
        ));
    }
    resource::RESOURCES
        .iter()
        .any(|r| r.plural == spec.names.plural)
        .then(|| {
            format!(
                "{:?} is the name of a built-in resource, which a custom resource may not take \
                 on this server",
                spec.names.plural
            )
        })
}

/// The value at a CRD `jsonPath` (`.spec.size`, `.status.conditions[0].type`,
/// `.metadata.labels.app`), the subset of JSONPath printer columns and scale paths use.
pub fn json_path<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    let mut current = object;
    for segment in path.trim_start_matches('.').split('.') {
        if segment.is_empty() {
            continue;
        }
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            current = current.get(index)?;
        }
    }
    Some(current)
}

/// Sets the value at a simple `jsonPath` (`.spec.replicas`), creating objects on the way.
pub fn set_json_path(object: &mut Value, path: &str, value: Value) {
    let mut current = object;
    for segment in path.trim_start_matches('.').split('.') {
        if !current.is_object() {
            *current = json!({});
        }
        current = &mut current[segment];
    }
    *current = value;
}

// ---------------------------------------------------------------------------------------------
// The CRD lifecycle, on every API server (apiextensions-apiserver's establishing, naming and
// finalizing controllers)

/// Follows the CRDs for the life of the process: serves what each defines, marks it
/// `Established`, and when one is deleted removes its objects, then its finalizer, then stops
/// serving it. Returns once the CRDs stored at start are served (or `timeout` passed).
pub async fn start(
    api: Arc<super::Api>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    timeout: std::time::Duration,
) {
    use crate::controllers::runtime::{self, Cache};
    let crds = Cache::new(&resource::CUSTOM_RESOURCE_DEFINITIONS);
    let changed = {
        let (api, cache) = (Arc::clone(&api), crds.clone());
        move |object: &Value| {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            match cache.get("", name) {
                Some(current) => reconcile(&api, &current),
                None => api.resources.custom.forget(name),
            }
        }
    };
    tokio::spawn(runtime::reflect(
        Arc::clone(&api),
        crds.clone(),
        changed,
        shutdown,
    ));
    runtime::wait_synced(&[&crds], timeout).await;
}

/// Serves a CRD as stored now, and sets off what its state calls for.
fn reconcile(api: &Arc<super::Api>, object: &Value) {
    let crd: CustomResourceDefinition = match apiary_api::meta::from_json(object.clone()) {
        Ok(crd) => crd,
        Err(e) => {
            tracing::warn!(crd = %object["metadata"]["name"], error = %e, "unreadable CRD");
            return;
        }
    };
    api.resources.custom.define(&crd);
    let api = Arc::clone(api);
    tokio::spawn(async move {
        let name = crd.metadata.name.clone();
        let result = if crd.metadata.deletion_timestamp.is_some() {
            finalize(&api, &crd).await
        } else {
            establish(&api, &crd).await
        };
        if let Err(e) = result {
            tracing::warn!(crd = %name, error = %e.message, "CRD not reconciled");
        }
    });
}

fn condition(kind: &str, reason: &str, message: &str, since: &Value) -> Value {
    json!({
        "type": kind, "status": "True", "reason": reason, "message": message,
        "lastTransitionTime": since,
    })
}

/// Writes the status of a served CRD: its accepted names, `NamesAccepted` and `Established`,
/// and its storage version among `storedVersions`. Written only when it differs, so every API
/// server may do it.
async fn establish(api: &Arc<super::Api>, crd: &CustomResourceDefinition) -> Result<(), ApiError> {
    let spec = &crd.spec;
    let status = crd.status.clone().unwrap_or_else(|| json!({}));
    let mut names = serde_json::to_value(&spec.names).unwrap_or_else(|_| json!({}));
    names["singular"] = json!(spec.singular());
    if spec.names.list_kind.is_empty() {
        names["listKind"] = json!(format!("{}List", spec.names.kind));
    }
    let mut stored: Vec<Value> = status["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(storage) = spec.storage_version()
        && !stored.iter().any(|v| v == storage.name.as_str())
    {
        stored.push(json!(storage.name));
    }
    // Conditions keep their transition time while they hold.
    let since = |kind: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind && c["status"] == "True")
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now()))
    };
    let wanted = json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found", &since("NamesAccepted")),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted", &since("Established")),
        ],
        "acceptedNames": names,
        "storedVersions": stored,
    });
    if status == wanted {
        return Ok(());
    }
    write_status(api, crd, wanted).await
}

async fn write_status(
    api: &Arc<super::Api>,
    crd: &CustomResourceDefinition,
    status: Value,
) -> Result<(), ApiError> {
    let target = super::path::Target {
        resource: &resource::CUSTOM_RESOURCE_DEFINITIONS,
        namespace: None,
        name: Some(crd.metadata.name.clone()),
        subresource: Some("status".into()),
    };
    let patch = serde_json::to_vec(&json!({ "status": status })).expect("JSON");
    match super::objects::patch(
        api,
        &target,
        &crd.metadata.name,
        "application/merge-patch+json",
        &patch,
    )
    .await
    {
        // Deleted meanwhile: nothing to establish.
        Err(e) if e.code == axum::http::StatusCode::NOT_FOUND => Ok(()),
        other => other.map(drop),
    }
}

/// A deleted CRD: its objects (of every version: they share their keys) are deleted, and once
/// none is left its finalizer is removed, which lets it go.
async fn finalize(api: &Arc<super::Api>, crd: &CustomResourceDefinition) -> Result<(), ApiError> {
    if !crd
        .metadata
        .finalizers
        .iter()
        .any(|f| f == CLEANUP_FINALIZER)
    {
        return Ok(());
    }
    let Some(version) = crd.spec.storage_version() else {
        return Ok(());
    };
    let Some(resource) = api
        .resources
        .get(&crd.spec.group, &version.name, &crd.spec.names.plural)
    else {
        return Ok(());
    };
    let everywhere = super::path::Target {
        resource,
        namespace: None,
        name: None,
        subresource: None,
    };
    // Objects with finalizers of their own leave when those are done: wait for them a while.
    for _ in 0..600 {
        let left =
            super::objects::delete_collection(api, &everywhere, &Default::default(), &Value::Null)
                .await?;
        if left["items"].as_array().is_none_or(|items| {
            items
                .iter()
                .all(|o| !o["metadata"]["deletionTimestamp"].is_string())
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let finalizers: Vec<&String> = crd
        .metadata
        .finalizers
        .iter()
        .filter(|f| *f != CLEANUP_FINALIZER)
        .collect();
    let target = super::path::Target {
        resource: &resource::CUSTOM_RESOURCE_DEFINITIONS,
        namespace: None,
        name: Some(crd.metadata.name.clone()),
        subresource: None,
    };
    let patch = json!({ "metadata": { "finalizers": finalizers } });
    let body = serde_json::to_vec(&patch).expect("JSON");
    match super::objects::patch(
        api,
        &target,
        &crd.metadata.name,
        "application/merge-patch+json",
        &body,
    )
    .await
    {
        Err(e) if e.code == axum::http::StatusCode::NOT_FOUND => Ok(()),
        other => other.map(drop),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(plural: &str, versions: &[&str]) -> CustomResourceDefinition {
        let versions: Vec<Value> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({"name": v, "served": true, "storage": i == 0,
                       "schema": {"openAPIV3Schema": {"type": "object"}},
                       "subresources": {"status": {}}})
            })
            .collect();
        apiary_api::meta::from_json(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.example.com")},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": plural, "kind": "Widget", "shortNames": ["wd"]},
                     "versions": versions},
        }))
        .unwrap()
    }

    #[test]
    fn a_crd_serves_its_versions_until_forgotten_and_interning_reuses_entries() {
        let custom = CustomResources::default();
        custom.define(&crd("widgets", &["v1", "v1beta1"]));
        let v1 = custom.get("example.com", "v1", "widgets").unwrap();
        assert_eq!(v1.info.kind, "Widget");
        assert_eq!(v1.info.short_names, ["wd"]);
        assert!(v1.info.subresource("status").is_some());
        assert_eq!(custom.all().len(), 2);
        assert_eq!(custom.all()[0].version, "v1", "GA sorts first");

        // Written again: the same interned entry, and a version dropped is no longer served.
        custom.define(&crd("widgets", &["v1"]));
        let again = custom.get("example.com", "v1", "widgets").unwrap();
        assert!(std::ptr::eq(again.info, v1.info));
        assert!(custom.get("example.com", "v1beta1", "widgets").is_none());
        assert!(custom.of(v1.info).is_some());

        custom.forget("widgets.example.com");
        assert!(custom.all().is_empty());
    }

    #[test]
    fn crds_may_not_shadow_built_ins() {
        assert!(conflict_with_built_ins(&crd("widgets", &["v1"])).is_none());
        assert!(conflict_with_built_ins(&crd("pods", &["v1"])).is_some());
    }

    #[test]
    fn json_paths_of_printer_columns_and_scale() {
        let object = json!({"spec": {"size": 3}, "status": {"conditions": [{"type": "Ready"}]}});
        assert_eq!(json_path(&object, ".spec.size"), Some(&json!(3)));
        assert_eq!(
            json_path(&object, ".status.conditions[0].type"),
            Some(&json!("Ready"))
        );
        assert_eq!(json_path(&object, ".spec.missing"), None);
        let mut object = json!({});
        set_json_path(&mut object, ".spec.replicas", json!(4));
        assert_eq!(object["spec"]["replicas"], 4);
    }
}
