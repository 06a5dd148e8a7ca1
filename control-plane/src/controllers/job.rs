//! The Job controller: runs a Job's pods until `completions` of them succeed (`parallelism` at
//! a time), fails it when too many fail (`backoffLimit`) or it runs too long
//! (`activeDeadlineSeconds`), honours `suspend`, and deletes it `ttlSecondsAfterFinished` after
//! it finished.
//!
//! Pods are selected by `controller-uid` = the Job's uid. The API server does not generate a
//! Job's `spec.selector` and keeps it immutable, so the controller uses that selector itself and
//! labels the pods it creates with it.

use std::{sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Pin, controlled_by, get_fresh, list_fresh, owner_reference, parse_time, put_status,
    record_event, resource,
    runtime::{self, Action, Cache, Error, Reconciler, Result},
    str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "job-controller";
/// Kubernetes' default `backoffLimit`.
const DEFAULT_BACKOFF_LIMIT: i64 = 6;

/// Runs the Job controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let jobs = resource(&api, "batch", "v1", "jobs");
    let pods = resource(&api, "", "v1", "pods");
    let cache = Cache::new(jobs);
    let reconciler = Arc::new(Jobs {
        api: Arc::clone(&api),
        cache: cache.clone(),
        pods,
    });
    runtime::run_owner_controller(api, cache, pods, reconciler, shutdown).await;
}

struct Jobs {
    api: Arc<Api>,
    cache: Cache,
    pods: &'static ResourceType,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The condition of `kind` with status True, if any.
pub(crate) fn true_condition<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

/// Whether the Job finished (`Complete` or `Failed`), and when.
pub(crate) fn finished(job: &Value) -> Option<(&'static str, Option<DateTime<Utc>>)> {
    for kind in ["Complete", "Failed"] {
        if let Some(c) = true_condition(job, kind) {
            let at = parse_time(&job["status"]["completionTime"])
                .or_else(|| parse_time(&c["lastTransitionTime"]));
            return Some((kind, at));
        }
    }
    None
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    })
}

/// What the Job's pods say, counted.
#[derive(Debug, Default)]
struct Counts {
    active: Vec<Value>,
    ready: usize,
    succeeded: i64,
    failed: i64,
}

fn count(pods: &[Value]) -> Counts {
    let mut counts = Counts::default();
    for pod in pods {
        match str_of(pod, "/status/phase") {
            "Succeeded" => counts.succeeded += 1,
            "Failed" => counts.failed += 1,
            _ if pod["metadata"]["deletionTimestamp"].is_string() => {}
            _ => {
                if pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                {
                    counts.ready += 1;
                }
                counts.active.push(pod.clone());
            }
        }
    }
    counts
}

/// The labels every pod of `job` carries, by which the Job selects them.
fn selector_labels(job: &Value) -> serde_json::Map<String, Value> {
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    let mut labels = serde_json::Map::new();
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
    labels.insert("controller-uid".into(), uid);
    labels.insert("job-name".into(), name);
    labels
}

/// What the reconcile decided about a Job that is not finished.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Finished successfully.
    Complete,
    /// Failed, with the reason.
    Failed(&'static str, String),
    /// Keeps running, with this many pods wanted running.
    Running(usize),
}

/// Decides the fate of a running (not suspended) Job from its counts.
fn verdict(spec: &Value, counts: &Counts, started: DateTime<Utc>, now: DateTime<Utc>) -> Verdict {
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"]
        .as_i64()
        .unwrap_or(DEFAULT_BACKOFF_LIMIT);
    let want = completions.unwrap_or(1);
    if counts.succeeded >= want {
        return Verdict::Complete;
    }
    if counts.failed > backoff_limit {
        return Verdict::Failed(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        );
    }
    if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64()
        && now >= started + chrono::Duration::seconds(deadline)
    {
        return Verdict::Failed(
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        );
    }
    let left = match completions {
        Some(c) => c - counts.succeeded,
        // Without completions, any success completes it: keep `parallelism` trying.
        None => parallelism,
    };
    Verdict::Running(usize::try_from(parallelism.min(left).max(0)).unwrap_or(0))
}

impl Jobs {
    fn pod_target(&self, namespace: &str, name: Option<&str>) -> Target {
        target(self.pods, namespace, name)
    }

    async fn event(&self, job: &Value, reason: &str, message: &str) {
        record_event(
            &self.api,
            COMPONENT,
            job,
            ("batch/v1", "Job"),
            reason,
            message,
        )
        .await;
    }

    async fn create_pods(&self, job: &Value, count: usize) -> Result<usize> {
        let namespace = str_of(job, "/metadata/namespace");
        let name = str_of(job, "/metadata/name");
        let template = &job["spec"]["template"];
        let mut labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.extend(selector_labels(job));
        let mut metadata = json!({
            "generateName": format!("{name}-"),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(job, "batch/v1", "Job")],
        });
        if template["metadata"]["annotations"].is_object() {
            metadata["annotations"] = template["metadata"]["annotations"].clone();
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": template["spec"],
        });
        let target = self.pod_target(namespace, None);
        let results = futures::future::join_all(
            (0..count).map(|_| objects::create(&self.api, &target, pod.clone())),
        )
        .await;
        let mut created = 0;
        let mut failed = None;
        for result in results {
            match result {
                Ok(pod) => {
                    created += 1;
                    let pod_name = str_of(&pod, "/metadata/name");
                    self.event(job, "SuccessfulCreate", &format!("Created pod: {pod_name}"))
                        .await;
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(Error::api(format!("creating pods for job {name}"), &e)),
            None => Ok(created),
        }
    }

    async fn delete_pods(&self, job: &Value, doomed: &[Value]) -> Result<()> {
        let results = futures::future::join_all(doomed.iter().map(|pod| async move {
            let namespace = str_of(pod, "/metadata/namespace");
            let name = str_of(pod, "/metadata/name");
            let options = json!({ "preconditions": { "uid": pod["metadata"]["uid"] } });
            match objects::delete(
                &self.api,
                &self.pod_target(namespace, Some(name)),
                name,
                &options,
            )
            .await
            {
                Ok(_) => {
                    self.event(job, "SuccessfulDelete", &format!("Deleted pod: {name}"))
                        .await;
                    Ok(())
                }
                Err(e) if e.reason == "NotFound" => Ok(()),
                Err(e) => Err(Error::api(format!("deleting pod {name}"), &e)),
            }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn write_status(&self, job: &Value, status: Value) -> Result<()> {
        if job["status"] == status {
            return Ok(());
        }
        // Pinned to the version read: the status builds on the previous one (conditions,
        // counts of pods that may be gone).
        put_status(&self.api, self.cache.resource(), job, status, Pin::AsRead).await
    }

    /// A finished Job: deleted `ttlSecondsAfterFinished` after it finished.
    async fn expire(&self, job: &Value, at: Option<DateTime<Utc>>) -> Result<Action> {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            return Ok(Action::Done);
        };
        let at = at.unwrap_or_else(Utc::now) + chrono::Duration::seconds(ttl);
        let left = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if !left.is_zero() {
            return Ok(Action::RequeueAfter(left + Duration::from_millis(100)));
        }
        let namespace = str_of(job, "/metadata/namespace");
        let name = str_of(job, "/metadata/name");
        let options = json!({
            "propagationPolicy": "Background",
            "preconditions": { "uid": job["metadata"]["uid"] },
        });
        match objects::delete(
            &self.api,
            &target(self.cache.resource(), namespace, Some(name)),
            name,
            &options,
        )
        .await
        {
            Ok(_) => Ok(Action::Done),
            Err(e) if e.reason == "NotFound" => Ok(Action::Done),
            Err(e) => Err(Error::api(format!("deleting finished job {name}"), &e)),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for Jobs {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        // Fresh, not cached: the status written last time must be seen (conditions, startTime).
        let Some(job) = get_fresh(&self.api, self.cache.resource(), key).await? else {
            return Ok(Action::Done);
        };
        if job["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        if let Some((_, at)) = finished(&job) {
            return self.expire(&job, at).await;
        }
        let spec = &job["spec"];
        let pods: Vec<Value> = list_fresh(&self.api, self.pods, &key.namespace)
            .await?
            .into_iter()
            .filter(|p| controlled_by(p, &job))
            .collect();
        let counts = count(&pods);
        let now = Utc::now();
        let now_text = format_time(now);
        let mut status = job["status"].as_object().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Pods may be deleted after they finished: the counts never go down.
        let succeeded = counts
            .succeeded
            .max(job["status"]["succeeded"].as_i64().unwrap_or(0));
        let failed = counts
            .failed
            .max(job["status"]["failed"].as_i64().unwrap_or(0));
        let counts = Counts {
            succeeded,
            failed,
            ..counts
        };

        let mut outcome = Ok(());
        let mut action = Action::Done;
        let mut active = counts.active.len();
        let mut finished_event = None;
        if spec["suspend"].as_bool() == Some(true) {
            if !counts.active.is_empty() {
                outcome = self.delete_pods(&job, &counts.active).await;
                active = 0;
            }
            status.remove("startTime");
            conditions.retain(|c| c["type"] != "Suspended");
            conditions.push(condition(
                "Suspended",
                "JobSuspended",
                "Job suspended",
                &now_text,
            ));
        } else {
            conditions.retain(|c| c["type"] != "Suspended");
            let started = match status.get("startTime").and_then(parse_time) {
                Some(t) => t,
                None => {
                    status.insert("startTime".into(), json!(now_text));
                    now
                }
            };
            match verdict(spec, &counts, started, now) {
                Verdict::Complete => {
                    outcome = self.delete_pods(&job, &counts.active).await;
                    active = 0;
                    for kind in ["SuccessCriteriaMet", "Complete"] {
                        conditions.push(condition(
                            kind,
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                            &now_text,
                        ));
                    }
                    status.insert("completionTime".into(), json!(now_text));
                    finished_event = Some(("Completed", "Job completed".to_owned()));
                    if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                        action = Action::RequeueAfter(Duration::from_secs(ttl.unsigned_abs()));
                    }
                }
                Verdict::Failed(reason, message) => {
                    outcome = self.delete_pods(&job, &counts.active).await;
                    active = 0;
                    for kind in ["FailureTarget", "Failed"] {
                        conditions.push(condition(kind, reason, &message, &now_text));
                    }
                    finished_event = Some((reason, message));
                    if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                        action = Action::RequeueAfter(Duration::from_secs(ttl.unsigned_abs()));
                    }
                }
                Verdict::Running(want) => {
                    if counts.active.len() < want {
                        match self.create_pods(&job, want - counts.active.len()).await {
                            Ok(n) => active += n,
                            Err(e) => outcome = Err(e),
                        }
                    } else if counts.active.len() > want {
                        let doomed = &counts.active[want..];
                        outcome = self.delete_pods(&job, doomed).await;
                        active = want;
                    }
                    if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64() {
                        let at = started + chrono::Duration::seconds(deadline);
                        let left = (at - now).to_std().unwrap_or(Duration::ZERO);
                        action = Action::RequeueAfter(left + Duration::from_millis(100));
                    }
                }
            }
        }
        status.insert("active".into(), json!(active));
        status.insert("ready".into(), json!(counts.ready.min(active)));
        status.insert("succeeded".into(), json!(counts.succeeded));
        status.insert("failed".into(), json!(counts.failed));
        status.insert("terminating".into(), json!(0));
        if conditions.is_empty() {
            status.remove("conditions");
        } else {
            // Keep a condition's transition time when it was already there.
            let old = job["status"]["conditions"].as_array();
            for c in &mut conditions {
                if let Some(prev) = old
                    .into_iter()
                    .flatten()
                    .find(|p| p["type"] == c["type"] && p["status"] == c["status"])
                {
                    *c = prev.clone();
                }
            }
            status.insert("conditions".into(), Value::Array(conditions));
        }
        if active == 0 {
            status.remove("active");
        }
        self.write_status(&job, Value::Object(status)).await?;
        if let Some((reason, message)) = finished_event {
            self.event(&job, reason, &message).await;
        }
        outcome?;
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(active: usize, succeeded: i64, failed: i64) -> Counts {
        Counts {
            active: vec![json!({}); active],
            ready: 0,
            succeeded,
            failed,
        }
    }

    #[test]
    fn verdicts() {
        let now = Utc::now();
        let spec = json!({ "completions": 3, "parallelism": 2, "backoffLimit": 1 });
        assert_eq!(
            verdict(&spec, &counts(0, 0, 0), now, now),
            Verdict::Running(2)
        );
        assert_eq!(
            verdict(&spec, &counts(2, 2, 0), now, now),
            Verdict::Running(1)
        );
        assert_eq!(
            verdict(&spec, &counts(0, 3, 0), now, now),
            Verdict::Complete
        );
        assert!(matches!(
            verdict(&spec, &counts(1, 0, 2), now, now),
            Verdict::Failed("BackoffLimitExceeded", _)
        ));
        let spec = json!({ "activeDeadlineSeconds": 5 });
        let started = now - chrono::Duration::seconds(6);
        assert!(matches!(
            verdict(&spec, &counts(1, 0, 0), started, now),
            Verdict::Failed("DeadlineExceeded", _)
        ));
        assert_eq!(
            verdict(&spec, &counts(0, 0, 0), now, now),
            Verdict::Running(1)
        );
        assert_eq!(
            verdict(&spec, &counts(0, 1, 0), now, now),
            Verdict::Complete
        );
    }
}
