//! The StatefulSet controller: pods with stable identities `<set>-<ordinal>` (hostname = pod
//! name, subdomain = `serviceName`), created in order and each only once the ones before it run
//! and are ready (`OrderedReady`) or all at once (`Parallel`), removed highest ordinal first,
//! recreated under the same name when deleted, and updated highest ordinal first with
//! `RollingUpdate` (down to `partition`) or by the user with `OnDelete`.
//!
//! Each pod gets a PersistentVolumeClaim per `volumeClaimTemplates` entry, named
//! `<template>-<set>-<ordinal>` and created before the pod (a claim being deleted holds the pod
//! back); deleting or recreating the pod leaves its claims alone, so a replacement finds its
//! data. `persistentVolumeClaimRetentionPolicy` decides what owns the claims, as Kubernetes'
//! `updateClaimOwnerRefForSetAndPod`: `whenDeleted: Delete` makes the set an owner (the garbage
//! collector deletes the claims with the set), `whenScaled: Delete` makes a condemned pod (an
//! ordinal at or above `replicas`) the owner (the claims go with the pod); `Retain` removes
//! those references.
//!
//! Revisions are the `controller-revision-hash` label, `<set>-<hash of the template>`.
//! ControllerRevision objects are not served, so a pod recreated below the partition (or under
//! `OnDelete`) gets the current template, not the one of the revision it had.

use std::{collections::BTreeMap, sync::Arc};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Pin, controlled_by, list_fresh, owner_reference, put_status, record_event,
    replicaset::{is_active, is_ready},
    resource,
    runtime::{self, Action, Cache, Error, Reconciler, Result},
    str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

/// `source.component` of the events this controller records.
const COMPONENT: &str = "statefulset-controller";

/// The label naming a pod's revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label naming the pod (for a per-pod Service).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the StatefulSet controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let sets = resource(&api, "apps", "v1", "statefulsets");
    let pods = resource(&api, "", "v1", "pods");
    let claims = resource(&api, "", "v1", "persistentvolumeclaims");
    let cache = Cache::new(sets);
    let reconciler = Arc::new(StatefulSets {
        api: Arc::clone(&api),
        cache: cache.clone(),
        pods,
        claims,
    });
    runtime::run_owner_controller(api, cache, pods, reconciler, shutdown).await;
}

struct StatefulSets {
    api: Arc<Api>,
    cache: Cache,
    pods: &'static ResourceType,
    claims: &'static ResourceType,
}

impl std::fmt::Debug for StatefulSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulSets").finish_non_exhaustive()
    }
}

/// The ordinal of a pod named `<set>-<ordinal>`.
fn ordinal_of(set_name: &str, pod: &Value) -> Option<usize> {
    let name = str_of(pod, "/metadata/name");
    let digits = name.strip_prefix(set_name)?.strip_prefix('-')?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

fn running_and_ready(pod: &Value) -> bool {
    str_of(pod, "/status/phase") == "Running"
        && is_ready(pod)
        && !pod["metadata"]["deletionTimestamp"].is_string()
}

fn revision_of(pod: &Value) -> &str {
    str_of(pod, &format!("/metadata/labels/{REVISION_LABEL}"))
}

/// The revision name of a set's current template: `<set>-<hash>`.
fn update_revision(set: &Value) -> String {
    let hash = super::deployment::template_hash(&set["spec"]["template"], 0);
    format!("{}-{hash}", str_of(set, "/metadata/name"))
}

/// The pod of ordinal `ordinal`, from the set's template.
fn new_pod(set: &Value, ordinal: usize, revision: &str) -> Value {
    let set_name = str_of(set, "/metadata/name");
    let name = format!("{set_name}-{ordinal}");
    let template = &set["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[POD_NAME_LABEL] = json!(name);
    labels[POD_INDEX_LABEL] = json!(ordinal.to_string());
    labels[REVISION_LABEL] = json!(revision);
    let mut metadata = json!({
        "name": name,
        "namespace": str_of(set, "/metadata/namespace"),
        "labels": labels,
        "ownerReferences": [owner_reference(set, "apps/v1", "StatefulSet")],
    });
    if template["metadata"]["annotations"].is_object() {
        metadata["annotations"] = template["metadata"]["annotations"].clone();
    }
    let mut spec = template["spec"].clone();
    // `updateStorage`: a volume per claim template, in place of any of the same name.
    let claims = claims_of(set, ordinal);
    if !claims.is_empty() {
        let mut volumes: Vec<Value> = claims
            .iter()
            .map(|(volume, claim)| {
                json!({ "name": volume, "persistentVolumeClaim": { "claimName": claim["metadata"]["name"] } })
            })
            .collect();
        volumes.extend(
            spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| !claims.iter().any(|(name, _)| v["name"] == name.as_str()))
                .cloned(),
        );
        spec["volumes"] = json!(volumes);
    }
    spec["hostname"] = json!(name);
    let service = str_of(set, "/spec/serviceName");
    if !service.is_empty() {
        spec["subdomain"] = json!(service);
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec })
}

/// The claims of ordinal `ordinal` (`getPersistentVolumeClaims`): each template named
/// `<template>-<set>-<ordinal>`, in the set's namespace, with the set's selector labels;
/// by the template's name (the pod's volume).
fn claims_of(set: &Value, ordinal: usize) -> Vec<(String, Value)> {
    let set_name = str_of(set, "/metadata/name");
    set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|template| {
            let template_name = str_of(template, "/metadata/name").to_owned();
            let mut claim = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": template["metadata"].clone(),
                "spec": template["spec"].clone(),
            });
            let metadata = &mut claim["metadata"];
            metadata["name"] = json!(format!("{template_name}-{set_name}-{ordinal}"));
            metadata["namespace"] = set["metadata"]["namespace"].clone();
            if !metadata["labels"].is_object() {
                metadata["labels"] = json!({});
            }
            for (k, v) in set["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                metadata["labels"][k] = v.clone();
            }
            for transient in ["resourceVersion", "uid", "creationTimestamp"] {
                if let Some(m) = metadata.as_object_mut() {
                    m.remove(transient);
                }
            }
            (template_name, claim)
        })
        .collect()
}

/// The owner references a claim of `pod` should carry besides others' (Kubernetes'
/// `updateClaimOwnerRefForSetAndPod`): `(set, pod)` wanted.
fn claim_owners(set: &Value, scaled_down: bool) -> (bool, bool) {
    let policy = &set["spec"]["persistentVolumeClaimRetentionPolicy"];
    let delete = |field: &str| policy[field].as_str() == Some("Delete");
    match (delete("whenScaled"), delete("whenDeleted")) {
        (false, false) => (false, false),
        (false, true) => (true, false),
        (true, false) => (false, scaled_down),
        (true, true) => (!scaled_down, scaled_down),
    }
}

/// `ownerReferences` with the (non-controller) reference to `owner` present or not.
fn with_owner(refs: &Value, owner: &Value, api_version: &str, kind: &str, wanted: bool) -> Value {
    let uid = &owner["metadata"]["uid"];
    let mut refs: Vec<Value> = refs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| &r["uid"] != uid)
        .cloned()
        .collect();
    if wanted {
        refs.push(json!({
            "apiVersion": api_version,
            "kind": kind,
            "name": owner["metadata"]["name"],
            "uid": uid,
        }));
    }
    json!(refs)
}

/// What one pass decided to do to the pods.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Create(usize),
    Delete(String),
}

/// The pods of a set, by ordinal, and those outside `0..replicas`.
#[derive(Debug, Default)]
struct Observed {
    by_ordinal: BTreeMap<usize, Value>,
    condemned: Vec<(usize, Value)>,
}

/// Plans the pod changes of one pass, as Kubernetes' `updateStatefulSet` orders them: replace
/// failed pods, create missing ones, remove condemned ones highest first, then roll updates
/// highest ordinal first. With `ordered` (OrderedReady), stops at the first pod not running and
/// ready and makes one change per pass.
fn plan(
    observed: &Observed,
    replicas: usize,
    ordered: bool,
    rolling_from: Option<usize>,
    update_revision: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for ordinal in 0..replicas {
        match observed.by_ordinal.get(&ordinal) {
            None => {
                steps.push(Step::Create(ordinal));
                if ordered {
                    return steps;
                }
            }
            Some(pod) if !is_active(pod) => {
                steps.push(Step::Delete(str_of(pod, "/metadata/name").to_owned()));
                if ordered {
                    return steps;
                }
            }
            Some(pod) => {
                if ordered && !running_and_ready(pod) {
                    return steps;
                }
            }
        }
    }
    if !steps.is_empty() {
        return steps;
    }
    let mut condemned: Vec<&(usize, Value)> = observed.condemned.iter().collect();
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));
    for (_, pod) in condemned {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            if ordered {
                return steps;
            }
            continue;
        }
        steps.push(Step::Delete(str_of(pod, "/metadata/name").to_owned()));
        if ordered {
            return steps;
        }
    }
    if !steps.is_empty() || !observed.condemned.is_empty() {
        return steps;
    }
    let Some(partition) = rolling_from else {
        return steps;
    };
    // Every pod must be there and healthy before one is taken down for an update.
    if !(0..replicas).all(|o| observed.by_ordinal.get(&o).is_some_and(running_and_ready)) {
        return steps;
    }
    for ordinal in (partition.min(replicas)..replicas).rev() {
        let pod = &observed.by_ordinal[&ordinal];
        if revision_of(pod) != update_revision {
            steps.push(Step::Delete(str_of(pod, "/metadata/name").to_owned()));
            return steps;
        }
    }
    steps
}

impl StatefulSets {
    fn pod_target(&self, namespace: &str, name: Option<&str>) -> Target {
        target(self.pods, namespace, name)
    }

    /// `createPersistentVolumeClaims`: the claims of `ordinal` that are missing; a claim
    /// being deleted is an error (the pod would find it gone).
    async fn create_claims(&self, set: &Value, ordinal: usize) -> Result<()> {
        let namespace = str_of(set, "/metadata/namespace");
        let set_name = str_of(set, "/metadata/name");
        let pod_name = format!("{set_name}-{ordinal}");
        for (_, claim) in claims_of(set, ordinal) {
            let claim_name = str_of(&claim, "/metadata/name").to_owned();
            let key = ObjectRef {
                resource: "persistentvolumeclaims".to_owned(),
                namespace: namespace.to_owned(),
                name: claim_name.clone(),
            };
            if let Some(existing) = super::get_fresh(&self.api, self.claims, &key).await? {
                if existing["metadata"]["deletionTimestamp"].is_string() {
                    return Err(Error {
                        action: format!("creating pod {pod_name}"),
                        message: format!("pvc {claim_name} is being deleted"),
                        reason: "Conflict",
                    });
                }
                continue;
            }
            let created =
                objects::create(&self.api, &target(self.claims, namespace, None), claim).await;
            match created {
                Ok(_) => {
                    record_event(
                        &self.api,
                        COMPONENT,
                        set,
                        ("apps/v1", "StatefulSet"),
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                        ),
                    )
                    .await;
                }
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => {
                    super::record_warning(
                        &self.api,
                        COMPONENT,
                        set,
                        ("apps/v1", "StatefulSet"),
                        "FailedCreate",
                        &format!(
                            "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                            e.message
                        ),
                    )
                    .await;
                    return Err(Error::api(format!("creating claim {claim_name}"), &e));
                }
            }
        }
        Ok(())
    }

    /// Brings the owner references of every pod's claims in line with the retention policy.
    async fn retain_claims(&self, set: &Value, pods: &[Value], replicas: usize) -> Result<()> {
        if set["spec"]["volumeClaimTemplates"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            return Ok(());
        }
        let namespace = str_of(set, "/metadata/namespace");
        let set_name = str_of(set, "/metadata/name");
        let claims = list_fresh(&self.api, self.claims, namespace).await?;
        for pod in pods {
            let Some(ordinal) = ordinal_of(set_name, pod) else {
                continue;
            };
            let (by_set, by_pod) = claim_owners(set, ordinal >= replicas);
            for (_, wanted) in claims_of(set, ordinal) {
                let name = str_of(&wanted, "/metadata/name");
                let Some(claim) = claims.iter().find(|c| str_of(c, "/metadata/name") == name)
                else {
                    continue;
                };
                let refs = &claim["metadata"]["ownerReferences"];
                let mut new_refs = with_owner(refs, set, "apps/v1", "StatefulSet", by_set);
                new_refs = with_owner(&new_refs, pod, "v1", "Pod", by_pod);
                let unchanged = new_refs == *refs
                    || (new_refs.as_array().is_some_and(Vec::is_empty) && refs.is_null());
                if unchanged {
                    continue;
                }
                let mut updated = claim.clone();
                updated["metadata"]["ownerReferences"] = new_refs;
                objects::update(
                    &self.api,
                    &target(self.claims, namespace, None),
                    name,
                    updated,
                )
                .await
                .map_err(|e| Error::api(format!("updating the owners of claim {name}"), &e))?;
            }
        }
        Ok(())
    }

    async fn create_pod(&self, set: &Value, ordinal: usize, revision: &str) -> Result<()> {
        self.create_claims(set, ordinal).await?;
        let pod = new_pod(set, ordinal, revision);
        let namespace = str_of(set, "/metadata/namespace");
        let pod_name = str_of(&pod, "/metadata/name").to_owned();
        let set_name = str_of(set, "/metadata/name");
        match objects::create(&self.api, &self.pod_target(namespace, None), pod).await {
            Ok(_) => {
                record_event(
                    &self.api,
                    COMPONENT,
                    set,
                    ("apps/v1", "StatefulSet"),
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                )
                .await;
                Ok(())
            }
            Err(e) => {
                record_event(
                    &self.api,
                    COMPONENT,
                    set,
                    ("apps/v1", "StatefulSet"),
                    "FailedCreate",
                    &format!(
                        "create Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                        e.message
                    ),
                )
                .await;
                Err(Error::api(format!("creating pod {pod_name}"), &e))
            }
        }
    }

    async fn delete_pod(&self, set: &Value, pod: &Value) -> Result<()> {
        if !super::delete_pod(&self.api, self.pods, pod).await? {
            return Ok(());
        }
        let name = str_of(pod, "/metadata/name");
        let set_name = str_of(set, "/metadata/name");
        record_event(
            &self.api,
            COMPONENT,
            set,
            ("apps/v1", "StatefulSet"),
            "SuccessfulDelete",
            &format!("delete Pod {name} in StatefulSet {set_name} successful"),
        )
        .await;
        Ok(())
    }

    async fn write_status(&self, set: &Value, status: Value) -> Result<()> {
        let current = &set["status"];
        let same = status
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| &current[k] == v);
        if same {
            return Ok(());
        }
        put_status(&self.api, self.cache.resource(), set, status, Pin::Latest).await
    }
}

#[async_trait::async_trait]
impl Reconciler for StatefulSets {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(set) = self.cache.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if set["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let set_name = key.name.as_str();
        let replicas = usize::try_from(set["spec"]["replicas"].as_i64().unwrap_or(1)).unwrap_or(0);
        let ordered = str_of(&set, "/spec/podManagementPolicy") != "Parallel";
        let strategy = &set["spec"]["updateStrategy"];
        let rolling = strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
        let partition =
            usize::try_from(strategy["rollingUpdate"]["partition"].as_i64().unwrap_or(0))
                .unwrap_or(0);
        let update_revision = update_revision(&set);
        let current_revision = match str_of(&set, "/status/currentRevision") {
            "" => update_revision.clone(),
            r => r.to_owned(),
        };

        let mut observed = Observed::default();
        let mut pods = Vec::new();
        for pod in list_fresh(&self.api, self.pods, &key.namespace).await? {
            if !controlled_by(&pod, &set) {
                continue;
            }
            match ordinal_of(set_name, &pod) {
                Some(ordinal) if ordinal < replicas => {
                    observed.by_ordinal.insert(ordinal, pod.clone());
                }
                Some(ordinal) => observed.condemned.push((ordinal, pod.clone())),
                None => observed.condemned.push((usize::MAX, pod.clone())),
            }
            pods.push(pod);
        }

        // Owners first: a condemned pod owns its claims (whenScaled: Delete) before it goes.
        self.retain_claims(&set, &pods, replicas).await?;
        let steps = plan(
            &observed,
            replicas,
            ordered,
            rolling.then_some(partition),
            &update_revision,
        );
        let mut outcome = Ok(());
        for step in steps {
            let result = match step {
                Step::Create(ordinal) => self.create_pod(&set, ordinal, &update_revision).await,
                Step::Delete(name) => {
                    match pods.iter().find(|p| str_of(p, "/metadata/name") == name) {
                        Some(pod) => self.delete_pod(&set, pod).await,
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                outcome = Err(e);
                break;
            }
        }

        // Status, from the pods seen at the start of the pass.
        let active: Vec<&Value> = pods
            .iter()
            .filter(|p| is_active(p) && !p["metadata"]["deletionTimestamp"].is_string())
            .collect();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let updated = active
            .iter()
            .filter(|p| revision_of(p) == update_revision)
            .count();
        let mut current = active
            .iter()
            .filter(|p| revision_of(p) == current_revision)
            .count();
        let mut current_revision = current_revision;
        if rolling && updated == replicas && active.len() == replicas && ready == replicas {
            current_revision.clone_from(&update_revision);
            current = updated;
        }
        let status = json!({
            "observedGeneration": set["metadata"]["generation"].as_i64().unwrap_or(1),
            "replicas": active.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": update_revision,
            "collisionCount": 0,
        });
        self.write_status(&set, status).await?;
        outcome?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, revision: &str) -> Value {
        json!({
            "metadata": { "name": name, "labels": { REVISION_LABEL: revision } },
            "status": {
                "phase": "Running",
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
            },
        })
    }

    fn observed(pods: &[Value]) -> Observed {
        let mut o = Observed::default();
        for p in pods {
            o.by_ordinal
                .insert(ordinal_of("web", p).unwrap(), p.clone());
        }
        o
    }

    #[test]
    fn ordinals_parse_only_canonical_numbers() {
        assert_eq!(ordinal_of("web", &pod("web-0", true, "")), Some(0));
        assert_eq!(ordinal_of("web", &pod("web-12", true, "")), Some(12));
        assert_eq!(ordinal_of("web", &pod("web-01", true, "")), None);
        assert_eq!(ordinal_of("web", &pod("webx-1", true, "")), None);
        assert_eq!(ordinal_of("web", &pod("web-", true, "")), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_readiness() {
        let none = Observed::default();
        assert_eq!(plan(&none, 3, true, None, "r"), [Step::Create(0)]);
        assert_eq!(
            plan(&none, 3, false, None, "r"),
            [Step::Create(0), Step::Create(1), Step::Create(2)]
        );
        let unready = observed(&[pod("web-0", false, "r")]);
        assert!(plan(&unready, 3, true, None, "r").is_empty());
        let ready = observed(&[pod("web-0", true, "r")]);
        assert_eq!(plan(&ready, 3, true, None, "r"), [Step::Create(1)]);
    }

    #[test]
    fn condemned_go_highest_first_and_updates_stop_at_the_partition() {
        let mut o = observed(&[pod("web-0", true, "r")]);
        o.condemned = vec![(1, pod("web-1", true, "r")), (2, pod("web-2", true, "r"))];
        assert_eq!(plan(&o, 1, true, None, "r"), [Step::Delete("web-2".into())]);

        let o = observed(&[
            pod("web-0", true, "old"),
            pod("web-1", true, "old"),
            pod("web-2", true, "new"),
        ]);
        assert_eq!(
            plan(&o, 3, true, Some(0), "new"),
            [Step::Delete("web-1".into())]
        );
        assert!(plan(&o, 3, true, Some(2), "new").is_empty());
        assert!(plan(&o, 3, true, None, "new").is_empty());
    }
}
