//! The Deployment controller: one ReplicaSet per pod template, named
//! `<deployment>-<hash of the template>`, rolled out with `RollingUpdate` (within `maxSurge` and
//! `maxUnavailable`) or `Recreate`; revisions in the `deployment.kubernetes.io/revision`
//! annotation; old ReplicaSets pruned beyond `revisionHistoryLimit`; the status and conditions
//! `kubectl rollout status` reads.
//!
//! A rollback (`kubectl rollout undo`) writes an old template back: the ReplicaSet with that
//! template becomes the new one again and gets the next revision.

use std::{sync::Arc, time::Duration};

use apiary_api::{apps_v1::Deployment, intstr::IntOrString, meta::ObjectRef};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::{
    controlled_by, controller_of, labels_of, list_fresh, now, owner_reference, record_event,
    replicaset::is_active,
    resource,
    runtime::{self, Action, Cache, Error, Queue, Reconciler, Result},
    selector_of, str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "deployment-controller";
const CONCURRENCY: usize = 4;
const RESYNC: Duration = Duration::from_secs(30);
/// The label that tells the ReplicaSets (and pods) of one Deployment apart.
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Runs the Deployment controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let deployments = resource(&api, "apps", "v1", "deployments");
    let replicasets = resource(&api, "apps", "v1", "replicasets");
    let pods = resource(&api, "", "v1", "pods");
    let cache = Cache::new(deployments);
    let rs_cache = Cache::new(replicasets);
    let queue = Queue::new();
    let reconciler = Arc::new(Deployments {
        api: Arc::clone(&api),
        cache: cache.clone(),
        replicasets,
        pods,
    });
    let own = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |d: &Value| queue.add(cache.key_of(d))
    };
    let rs_changed = {
        let (cache, queue) = (cache.clone(), Arc::clone(&queue));
        move |rs: &Value| {
            let namespace = str_of(rs, "/metadata/namespace");
            match controller_of(rs) {
                Some(owner) if owner["kind"] == "Deployment" => queue.add(ObjectRef {
                    resource: cache.resource().plural.to_owned(),
                    namespace: namespace.to_owned(),
                    name: owner["name"].as_str().unwrap_or_default().to_owned(),
                }),
                Some(_) => {}
                None => {
                    let labels = labels_of(rs);
                    for d in cache.list(namespace) {
                        if selector_of(&d).is_some_and(|s| !s.is_empty() && s.matches(&labels)) {
                            queue.add(cache.key_of(&d));
                        }
                    }
                }
            }
        }
    };
    tokio::join!(
        runtime::reflect(Arc::clone(&api), cache.clone(), own, shutdown.clone()),
        runtime::reflect(Arc::clone(&api), rs_cache, rs_changed, shutdown.clone()),
        runtime::resync(cache, Arc::clone(&queue), RESYNC, shutdown.clone()),
        runtime::process(reconciler, queue, CONCURRENCY, shutdown),
    );
}

struct Deployments {
    api: Arc<Api>,
    cache: Cache,
    replicasets: &'static ResourceType,
    pods: &'static ResourceType,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments").finish_non_exhaustive()
    }
}

/// Drops what Go's `omitempty` drops (null, "", false, {}, []), recursively, so that templates
/// compare as Kubernetes' semantic equality does, whoever serialized them.
fn normalize(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Object(map) => {
            let map: Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), normalize(v)?)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|v| normalize(v).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other.clone()),
    }
}

/// A pod template without the hash label, normalized: equal keys mean equal templates.
fn template_key(template: &Value) -> Value {
    let mut template = template.clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    normalize(&template).unwrap_or(Value::Null)
}

/// JSON with sorted keys, whatever the map type keeps.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `pod-template-hash` of a template: FNV-32a of it (and the collision count), its decimal
/// digits spelled in Kubernetes' safe alphabet, as `controller.ComputeHash` does.
pub fn template_hash(template: &Value, collision_count: i64) -> String {
    let mut text = String::new();
    canonical(&template_key(template), &mut text);
    if collision_count > 0 {
        text.push_str(&collision_count.to_string());
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d - b'0') % ALPHABET.len()] as char)
        .collect()
}

fn revision_of(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_count(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

fn parse_time(time: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The parts of a Deployment's spec a rollout reads, defaulted.
#[derive(Debug)]
struct Spec {
    replicas: i64,
    recreate: bool,
    max_surge: i64,
    max_unavailable: i64,
    min_ready_seconds: i64,
    history_limit: i64,
    paused: bool,
    progress_deadline: Option<i64>,
}

impl Spec {
    fn of(d: &Value) -> Self {
        let typed: Option<Deployment> = apiary_api::meta::from_json(d.clone()).ok();
        let spec = typed.map(|d| d.spec).unwrap_or_default();
        let replicas = i64::from(spec.replicas.unwrap_or(1));
        let strategy = spec.strategy.unwrap_or_default();
        let recreate = strategy.type_ == "Recreate";
        let rolling = strategy.rolling_update.unwrap_or_default();
        let total = i32::try_from(replicas).unwrap_or(i32::MAX);
        let resolve = |v: Option<IntOrString>, default: &str, up: bool| {
            let v = v.unwrap_or_else(|| IntOrString::String(default.to_owned()));
            i64::from(v.resolve(total, up).unwrap_or(0).max(0))
        };
        let (max_surge, mut max_unavailable) = if recreate {
            (0, 0)
        } else {
            (
                resolve(rolling.max_surge, "25%", true),
                resolve(rolling.max_unavailable, "25%", false).min(replicas),
            )
        };
        if !recreate && max_surge == 0 && max_unavailable == 0 {
            // Both zero would stall the rollout: Kubernetes allows one unavailable.
            max_unavailable = 1;
        }
        Self {
            replicas,
            recreate,
            max_surge,
            max_unavailable,
            min_ready_seconds: i64::from(spec.min_ready_seconds),
            history_limit: i64::from(spec.revision_history_limit.unwrap_or(10)),
            paused: spec.paused,
            // i32::MAX is Kubernetes' "no deadline".
            progress_deadline: spec
                .progress_deadline_seconds
                .filter(|s| *s != i32::MAX)
                .map(i64::from),
        }
    }
}

/// Sets a condition of `type_`, keeping its transition time while its status holds and leaving
/// it alone when status and reason are unchanged (`always` refreshes its update time anyway).
fn set_condition(
    conditions: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    always: bool,
) {
    let now = now();
    let existing = conditions.iter().position(|c| c["type"] == type_);
    let mut transition = now.clone();
    if let Some(i) = existing {
        let current = &conditions[i];
        if current["status"] == status && current["reason"] == reason && !always {
            return;
        }
        if current["status"] == status
            && let Some(t) = current["lastTransitionTime"].as_str()
        {
            transition = t.to_owned();
        }
        conditions.remove(i);
    }
    conditions.push(json!({
        "type": type_,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }));
}

fn condition<'a>(conditions: &'a [Value], type_: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| c["type"] == type_)
}

/// One reconcile's view of a Deployment and its ReplicaSets.
struct Rollout<'a> {
    ctl: &'a Deployments,
    d: Value,
    spec: Spec,
    namespace: String,
    name: String,
    new_rs: Option<Value>,
    old: Vec<Value>,
    conditions: Vec<Value>,
    collision_count: i64,
}

impl Rollout<'_> {
    fn all(&self) -> impl Iterator<Item = &Value> {
        self.old.iter().chain(self.new_rs.as_ref())
    }

    async fn event(&self, reason: &str, message: &str) {
        record_event(
            &self.ctl.api,
            COMPONENT,
            &self.d,
            ("apps/v1", "Deployment"),
            reason,
            message,
        )
        .await;
    }

    fn rs_target(&self, name: &str) -> Target {
        target(self.ctl.replicasets, &self.namespace, Some(name))
    }

    async fn patch_rs(&self, name: &str, patch: &Value) -> Result<Value> {
        objects::patch(
            &self.ctl.api,
            &self.rs_target(name),
            name,
            "application/merge-patch+json",
            patch.to_string().as_bytes(),
        )
        .await
        .map_err(|e| Error::api(format!("patching replica set {name}"), &e))
    }

    /// Scales one ReplicaSet (in `self`) to `replicas`; returns whether anything changed.
    async fn scale(&mut self, which: Which, replicas: i64) -> Result<bool> {
        let rs = match which {
            Which::New => self.new_rs.as_ref(),
            Which::Old(i) => self.old.get(i),
        };
        let Some(rs) = rs else { return Ok(false) };
        let from = spec_replicas(rs);
        if from == replicas {
            return Ok(false);
        }
        let name = str_of(rs, "/metadata/name").to_owned();
        let updated = self
            .patch_rs(&name, &json!({ "spec": { "replicas": replicas } }))
            .await?;
        match which {
            Which::New => self.new_rs = Some(updated),
            Which::Old(i) => self.old[i] = updated,
        }
        let direction = if replicas > from { "up" } else { "down" };
        self.event(
            "ScalingReplicaSet",
            &format!("Scaled {direction} replica set {name} to {replicas}"),
        )
        .await;
        Ok(true)
    }

    /// Finds the new ReplicaSet's revision (and the Deployment's), creating the ReplicaSet when
    /// `create` and it does not exist.
    async fn sync_revision(&mut self, create: bool) -> Result<()> {
        let max_old = self.old.iter().map(revision_of).max().unwrap_or(0);
        let next = max_old + 1;
        let annotations: Map<String, Value> = self.d["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(rs) = self.new_rs.clone() {
            if revision_of(&rs) < next {
                let mut wanted = annotations.clone();
                wanted.insert(REVISION.into(), json!(next.to_string()));
                let name = str_of(&rs, "/metadata/name").to_owned();
                let updated = self
                    .patch_rs(&name, &json!({ "metadata": { "annotations": wanted } }))
                    .await?;
                self.new_rs = Some(updated);
            }
            if self.spec.progress_deadline.is_some()
                && condition(&self.conditions, "Progressing").is_none()
            {
                let msg = format!("Found new replica set {:?}", str_of(&rs, "/metadata/name"));
                set_condition(
                    &mut self.conditions,
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    &msg,
                    false,
                );
            }
        } else if create {
            self.create_new_rs(annotations, next).await?;
        }
        if let Some(rs) = &self.new_rs {
            let revision = revision_of(rs).to_string();
            if self.d["metadata"]["annotations"][REVISION].as_str() != Some(revision.as_str()) {
                let patch = json!({ "metadata": { "annotations": { REVISION: revision } } });
                let target = target(self.ctl.cache.resource(), &self.namespace, Some(&self.name));
                let updated = objects::patch(
                    &self.ctl.api,
                    &target,
                    &self.name,
                    "application/merge-patch+json",
                    patch.to_string().as_bytes(),
                )
                .await
                .map_err(|e| Error::api("setting the deployment's revision", &e))?;
                self.d["metadata"] = updated["metadata"].clone();
            }
        }
        Ok(())
    }

    async fn create_new_rs(
        &mut self,
        mut annotations: Map<String, Value>,
        revision: i64,
    ) -> Result<()> {
        let template = &self.d["spec"]["template"];
        let hash = template_hash(template, self.collision_count);
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = self.d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        annotations.insert(REVISION.into(), json!(revision.to_string()));
        let name = format!("{}-{hash}", self.name);
        let mut rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": rs_template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [owner_reference(&self.d, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": self.spec.min_ready_seconds,
                "selector": selector,
                "template": rs_template,
            },
        });
        let replicas = if self.spec.recreate {
            self.spec.replicas
        } else {
            self.new_rs_replicas(0)
        };
        rs["spec"]["replicas"] = json!(replicas);
        let target = target(self.ctl.replicasets, &self.namespace, None);
        match objects::create(&self.ctl.api, &target, rs).await {
            Ok(created) => {
                self.new_rs = Some(created);
                if replicas > 0 {
                    self.event(
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {name} to {replicas}"),
                    )
                    .await;
                }
                let msg = format!("Created new replica set {name:?}");
                set_condition(
                    &mut self.conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &msg,
                    true,
                );
                Ok(())
            }
            Err(e) if e.reason == "AlreadyExists" => {
                // Same name, other template (or owner): a hash collision. Try the next hash.
                self.collision_count += 1;
                Err(Error::api(format!("creating replica set {name}"), &e))
            }
            Err(e) => Err(Error::api(format!("creating replica set {name}"), &e)),
        }
    }

    /// What the new ReplicaSet may grow to within `maxSurge`. Pods still present count even
    /// after their ReplicaSet was scaled down, so that the pods never exceed the surge.
    fn new_rs_replicas(&self, current_new: i64) -> i64 {
        let current: i64 = self
            .all()
            .map(|rs| spec_replicas(rs).max(status_count(rs, "replicas")))
            .sum::<i64>()
            + if self.new_rs.is_none() {
                current_new
            } else {
                0
            };
        let max_total = self.spec.replicas + self.spec.max_surge;
        if current >= max_total {
            return current_new;
        }
        let up = (max_total - current).min(self.spec.replicas - current_new);
        current_new + up.max(0)
    }

    async fn reconcile_new(&mut self) -> Result<bool> {
        let Some(rs) = &self.new_rs else {
            return Ok(false);
        };
        let current = spec_replicas(rs);
        if current == self.spec.replicas {
            return Ok(false);
        }
        let target = if current > self.spec.replicas {
            self.spec.replicas
        } else {
            self.new_rs_replicas(current)
        };
        self.scale(Which::New, target).await
    }

    /// Scales old ReplicaSets down as far as `maxUnavailable` allows: their unhealthy pods
    /// first, then (oldest first) as many as keep `replicas - maxUnavailable` available.
    async fn reconcile_old(&mut self) -> Result<bool> {
        let old_pods: i64 = self.old.iter().map(spec_replicas).sum();
        if old_pods == 0 {
            return Ok(false);
        }
        let all_pods: i64 = self.all().map(spec_replicas).sum();
        let min_available = self.spec.replicas - self.spec.max_unavailable;
        let new_unavailable = self.new_rs.as_ref().map_or(0, |rs| {
            (spec_replicas(rs) - status_count(rs, "availableReplicas")).max(0)
        });
        let mut max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut order: Vec<usize> = (0..self.old.len()).collect();
        order.sort_by_key(|&i| {
            (
                str_of(&self.old[i], "/metadata/creationTimestamp").to_owned(),
                revision_of(&self.old[i]),
            )
        });
        let mut changed = false;
        // Unhealthy pods of old ReplicaSets first: removing them costs no availability.
        let mut cleaned = 0;
        for &i in &order {
            if cleaned >= max_scaled_down {
                break;
            }
            let rs = &self.old[i];
            let (spec, available) = (spec_replicas(rs), status_count(rs, "availableReplicas"));
            if spec <= available {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(spec - available);
            cleaned += down;
            changed |= self.scale(Which::Old(i), spec - down).await?;
        }
        max_scaled_down -= cleaned;
        if max_scaled_down <= 0 {
            return Ok(changed);
        }
        let available: i64 = self
            .all()
            .map(|rs| status_count(rs, "availableReplicas"))
            .sum();
        if available <= min_available {
            return Ok(changed);
        }
        let total = (available - min_available).min(max_scaled_down);
        let mut scaled = 0;
        for &i in &order {
            if scaled >= total {
                break;
            }
            let spec = spec_replicas(&self.old[i]);
            if spec == 0 {
                continue;
            }
            let down = spec.min(total - scaled);
            scaled += down;
            changed |= self.scale(Which::Old(i), spec - down).await?;
        }
        Ok(changed)
    }

    async fn rolling(&mut self) -> Result<()> {
        self.sync_revision(true).await?;
        if self.reconcile_new().await? {
            return Ok(());
        }
        if self.reconcile_old().await? {
            return Ok(());
        }
        if self.complete(&self.status()) {
            self.cleanup().await?;
        }
        Ok(())
    }

    /// Old pods that still run (or may): Recreate waits for them to be gone.
    async fn old_pods_running(&self) -> Result<bool> {
        if self.old.iter().any(|rs| status_count(rs, "replicas") > 0) {
            return Ok(true);
        }
        let pods = list_fresh(&self.ctl.api, self.ctl.pods, &self.namespace).await?;
        Ok(pods
            .iter()
            .filter(|p| is_active(p))
            .any(|p| self.old.iter().any(|rs| controlled_by(p, rs))))
    }

    async fn recreate(&mut self) -> Result<()> {
        self.sync_revision(false).await?;
        let mut scaled = false;
        for i in 0..self.old.len() {
            scaled |= self.scale(Which::Old(i), 0).await?;
        }
        if scaled || self.old_pods_running().await? {
            return Ok(());
        }
        if self.new_rs.is_none() {
            self.sync_revision(true).await?;
        }
        self.scale(Which::New, self.spec.replicas).await?;
        if self.complete(&self.status()) {
            self.cleanup().await?;
        }
        Ok(())
    }

    /// Paused: no rollout, but scaling still applies to the one active ReplicaSet.
    async fn paused(&mut self) -> Result<()> {
        self.sync_revision(false).await?;
        let active_old: Vec<usize> = (0..self.old.len())
            .filter(|&i| spec_replicas(&self.old[i]) > 0)
            .collect();
        let new_active = self.new_rs.as_ref().is_some_and(|rs| spec_replicas(rs) > 0);
        if active_old.is_empty() {
            self.scale(Which::New, self.spec.replicas).await?;
        } else if let ([only], false) = (active_old.as_slice(), new_active) {
            self.scale(Which::Old(*only), self.spec.replicas).await?;
        }
        self.cleanup().await
    }

    /// Deletes the oldest fully scaled-down ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&mut self) -> Result<()> {
        let mut cleanable: Vec<&Value> = self
            .old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && status_count(rs, "replicas") == 0
                    && !rs["metadata"]["deletionTimestamp"].is_string()
            })
            .collect();
        let surplus = i64::try_from(cleanable.len()).unwrap_or(0) - self.spec.history_limit.max(0);
        if surplus <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| revision_of(rs));
        let doomed: Vec<String> = cleanable
            .iter()
            .take(usize::try_from(surplus).unwrap_or(0))
            .map(|rs| str_of(rs, "/metadata/name").to_owned())
            .collect();
        for name in &doomed {
            let options = json!({ "propagationPolicy": "Background" });
            match objects::delete(&self.ctl.api, &self.rs_target(name), name, &options).await {
                Ok(_) => {}
                Err(e) if e.reason == "NotFound" => {}
                Err(e) => return Err(Error::api(format!("deleting replica set {name}"), &e)),
            }
        }
        self.old
            .retain(|rs| !doomed.iter().any(|n| n == str_of(rs, "/metadata/name")));
        Ok(())
    }

    /// The counts of `status`, from the ReplicaSets' statuses.
    fn status(&self) -> Value {
        let sum = |field: &str| -> i64 { self.all().map(|rs| status_count(rs, field)).sum() };
        let available = sum("availableReplicas");
        let total_spec: i64 = self.all().map(spec_replicas).sum();
        json!({
            "observedGeneration": self.d["metadata"]["generation"].as_i64().unwrap_or(1),
            "replicas": sum("replicas"),
            "updatedReplicas": self.new_rs.as_ref().map_or(0, |rs| status_count(rs, "replicas")),
            "readyReplicas": sum("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": (total_spec - available).max(0),
        })
    }

    fn complete(&self, status: &Value) -> bool {
        let n = |f: &str| status[f].as_i64().unwrap_or(0);
        n("updatedReplicas") == self.spec.replicas
            && n("replicas") == self.spec.replicas
            && n("availableReplicas") == self.spec.replicas
            && n("observedGeneration") >= self.d["metadata"]["generation"].as_i64().unwrap_or(1)
    }

    /// Writes status and conditions; returns when to look again for the progress deadline.
    async fn sync_status(&mut self) -> Result<Option<Duration>> {
        let mut status = self.status();
        let old = &self.d["status"];
        let n = |s: &Value, f: &str| s[f].as_i64().unwrap_or(0);
        let min_available = self.spec.replicas - self.spec.max_unavailable;
        if n(&status, "availableReplicas") >= min_available {
            set_condition(
                &mut self.conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                false,
            );
        } else {
            set_condition(
                &mut self.conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                false,
            );
        }
        let mut recheck = None;
        let progressing_reason =
            condition(&self.conditions, "Progressing").map(|c| str_of(c, "/reason").to_owned());
        if self.spec.paused {
            if progressing_reason.as_deref() != Some("DeploymentPaused") {
                set_condition(
                    &mut self.conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    true,
                );
            }
        } else if let Some(deadline) = self.spec.progress_deadline {
            if progressing_reason.as_deref() == Some("DeploymentPaused") {
                set_condition(
                    &mut self.conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                    true,
                );
            }
            let new_name = self
                .new_rs
                .as_ref()
                .map(|rs| str_of(rs, "/metadata/name").to_owned())
                .unwrap_or_default();
            let is_complete = n(&status, "replicas") == n(&status, "updatedReplicas")
                && progressing_reason.as_deref() == Some("NewReplicaSetAvailable");
            let old_old = n(old, "replicas") - n(old, "updatedReplicas");
            let new_old = n(&status, "replicas") - n(&status, "updatedReplicas");
            let progressing = n(&status, "updatedReplicas") > n(old, "updatedReplicas")
                || new_old < old_old
                || n(&status, "readyReplicas") > n(old, "readyReplicas")
                || n(&status, "availableReplicas") > n(old, "availableReplicas");
            if !is_complete {
                if self.complete(&status) {
                    set_condition(
                        &mut self.conditions,
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        &format!("ReplicaSet {new_name:?} has successfully progressed."),
                        false,
                    );
                } else if progressing {
                    set_condition(
                        &mut self.conditions,
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        &format!("ReplicaSet {new_name:?} is progressing."),
                        true,
                    );
                } else if let Some(cond) = condition(&self.conditions, "Progressing") {
                    let reason = str_of(cond, "/reason");
                    let since = cond["lastUpdateTime"].as_str().and_then(parse_time);
                    if reason != "ProgressDeadlineExceeded"
                        && let Some(since) = since
                    {
                        let at = since + chrono::Duration::seconds(deadline);
                        let now = Utc::now();
                        if now > at {
                            set_condition(
                                &mut self.conditions,
                                "Progressing",
                                "False",
                                "ProgressDeadlineExceeded",
                                &format!("ReplicaSet {new_name:?} has timed out progressing."),
                                false,
                            );
                        } else {
                            recheck = Some(
                                (at - now).to_std().unwrap_or_default() + Duration::from_secs(1),
                            );
                        }
                    }
                }
            }
        }
        status["conditions"] = json!(self.conditions);
        if self.collision_count > 0 {
            status["collisionCount"] = json!(self.collision_count);
        }
        if normalize(&status) != normalize(&self.d["status"]) {
            let mut updated = self.d.clone();
            updated["status"] = status;
            updated["metadata"]["resourceVersion"] = Value::Null;
            let target = Target {
                subresource: Some("status".into()),
                ..target(self.ctl.cache.resource(), &self.namespace, Some(&self.name))
            };
            match objects::update(&self.ctl.api, &target, &self.name, updated).await {
                Ok(_) => {}
                Err(e) if e.reason == "NotFound" => {}
                Err(e) => return Err(Error::api("updating the deployment's status", &e)),
            }
        }
        Ok(recheck)
    }
}

#[derive(Clone, Copy, Debug)]
enum Which {
    New,
    Old(usize),
}

impl Deployments {
    /// The Deployment's ReplicaSets: those it controls and still selects, plus orphans it
    /// selects (adopted). Ones it stopped selecting are released.
    async fn claim(&self, d: &Value, namespace: &str) -> Result<Vec<Value>> {
        let Some(selector) = selector_of(d).filter(|s| !s.is_empty()) else {
            return Ok(Vec::new());
        };
        let mut owned = Vec::new();
        for rs in list_fresh(&self.api, self.replicasets, namespace).await? {
            if rs["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let matches = selector.matches(&labels_of(&rs));
            let name = str_of(&rs, "/metadata/name").to_owned();
            let target = target(self.replicasets, namespace, Some(&name));
            if controlled_by(&rs, d) {
                if matches {
                    owned.push(rs);
                } else {
                    let mut released = rs.clone();
                    if let Some(refs) = released["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != d["metadata"]["uid"]);
                    }
                    objects::update(&self.api, &target, &name, released)
                        .await
                        .map_err(|e| Error::api(format!("releasing replica set {name}"), &e))?;
                }
            } else if controller_of(&rs).is_none() && matches {
                let mut adopted = rs.clone();
                let reference = owner_reference(d, "apps/v1", "Deployment");
                match adopted["metadata"]["ownerReferences"].as_array_mut() {
                    Some(refs) => refs.push(reference),
                    None => adopted["metadata"]["ownerReferences"] = json!([reference]),
                }
                let adopted = objects::update(&self.api, &target, &name, adopted)
                    .await
                    .map_err(|e| Error::api(format!("adopting replica set {name}"), &e))?;
                owned.push(adopted);
            }
        }
        Ok(owned)
    }
}

#[async_trait::async_trait]
impl Reconciler for Deployments {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(d) = self.cache.get(&key.namespace, &key.name) else {
            return Ok(Action::Done);
        };
        if d["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let owned = self.claim(&d, &key.namespace).await?;
        let wanted = template_key(&d["spec"]["template"]);
        let (mut new, old): (Vec<Value>, Vec<Value>) = owned
            .into_iter()
            .partition(|rs| template_key(&rs["spec"]["template"]) == wanted);
        // Several with the same template (an old collision): the oldest is the new one.
        new.sort_by_key(|rs| str_of(rs, "/metadata/creationTimestamp").to_owned());
        let mut old = old;
        let new_rs = if new.is_empty() {
            None
        } else {
            let first = new.remove(0);
            old.extend(new);
            Some(first)
        };
        let spec = Spec::of(&d);
        let mut rollout = Rollout {
            ctl: self,
            conditions: d["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            collision_count: d["status"]["collisionCount"].as_i64().unwrap_or(0),
            d: (*d).clone(),
            spec,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            new_rs,
            old,
        };
        let outcome = if rollout.spec.paused {
            rollout.paused().await
        } else if rollout.spec.recreate {
            rollout.recreate().await
        } else {
            rollout.rolling().await
        };
        // Status is written even when a step failed: it says where the rollout stands.
        let recheck = rollout.sync_status().await?;
        outcome?;
        Ok(recheck.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compare_as_go_omits_empty_fields() {
        let stored = json!({
            "metadata": { "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "web", "image": "nginx" }] },
        });
        let from_kubectl = json!({
            "metadata": { "labels": { "app": "web", HASH_LABEL: "abc" }, "creationTimestamp": null },
            "spec": { "containers": [{ "name": "web", "image": "nginx", "resources": {} }] },
        });
        assert_eq!(template_key(&stored), template_key(&from_kubectl));
        assert_eq!(template_hash(&stored, 0), template_hash(&from_kubectl, 0));
        let other = json!({
            "metadata": { "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "web", "image": "nginx:2" }] },
        });
        assert_ne!(template_hash(&stored, 0), template_hash(&other, 0));
        assert_ne!(template_hash(&stored, 0), template_hash(&stored, 1));
        assert!(
            template_hash(&stored, 0)
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
    }

    #[test]
    fn surge_and_unavailable_resolve_percentages() {
        let d = json!({ "spec": {
            "replicas": 10,
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" } },
            "template": { "spec": { "containers": [] } },
        }});
        let spec = Spec::of(&d);
        assert_eq!((spec.max_surge, spec.max_unavailable), (3, 2));
        let d = json!({ "spec": {
            "replicas": 3,
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 0, "maxUnavailable": 0 } },
            "template": { "spec": { "containers": [] } },
        }});
        assert_eq!(Spec::of(&d).max_unavailable, 1);
    }
}
