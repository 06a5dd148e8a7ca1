//! The CronJob controller: creates a Job for every time the schedule comes round, named
//! `<cronjob>-<minutes since the epoch>`. The schedule is parsed by [`apiary_api::cron`], the
//! parser the API server validates with (five fields or a macro such as `@hourly` or
//! `@every 1h30m`), and read in `spec.timeZone`, or in the zone of a legacy `CRON_TZ=` prefix
//! (which wins, as in Kubernetes), or else in UTC. It honours `concurrencyPolicy`,
//! `startingDeadlineSeconds` and `suspend`, prunes finished Jobs beyond the history limits and
//! reports `active`, `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! "Now" comes from a [`Clock`]. For tests only, `APIARY_CRONJOB_CLOCK_SPEEDUP=<factor>` makes
//! the controller's clock run that many times faster than real time (from the moment it
//! starts), so that minutes pass in seconds.

use std::{sync::Arc, time::Duration};

use apiary_api::{
    cron::{self, Schedule},
    meta::ObjectRef,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Pin, controlled_by, get_fresh, job, list_fresh, owner_reference, parse_time, put_status,
    record_event, record_warning, resource,
    runtime::{self, Action, Cache, Error, Reconciler, Result},
    str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "cronjob-controller";
/// The environment variable that speeds the controller's clock up (tests only).
pub const SPEEDUP_ENV: &str = "APIARY_CRONJOB_CLOCK_SPEEDUP";

// ---------------------------------------------------------------------------------------------
// Clock

/// The controller's "now": real time, optionally running faster (tests only).
#[derive(Clone, Debug)]
pub struct Clock {
    origin: DateTime<Utc>,
    speedup: f64,
}

impl Clock {
    pub fn real() -> Self {
        Self::fast(1.0)
    }

    /// A clock running `speedup` times faster than real time from now.
    pub fn fast(speedup: f64) -> Self {
        Self {
            origin: Utc::now(),
            speedup: speedup.max(1.0),
        }
    }

    fn from_env() -> Self {
        match std::env::var(SPEEDUP_ENV).ok().and_then(|s| s.parse().ok()) {
            Some(speedup) => Self::fast(speedup),
            None => Self::real(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let real = Utc::now();
        if self.speedup <= 1.0 {
            return real;
        }
        let elapsed = (real - self.origin).num_milliseconds() as f64 * self.speedup;
        self.origin + chrono::Duration::milliseconds(elapsed as i64)
    }

    /// How long in real time `span` of clock time takes.
    pub fn real_duration(&self, span: chrono::Duration) -> Duration {
        let span = span.to_std().unwrap_or(Duration::ZERO);
        span.div_f64(self.speedup)
    }
}

// ---------------------------------------------------------------------------------------------
// The controller

/// Runs the CronJob controller until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let cronjobs = resource(&api, "batch", "v1", "cronjobs");
    let jobs = resource(&api, "batch", "v1", "jobs");
    let cache = Cache::new(cronjobs);
    let reconciler = Arc::new(CronJobs {
        api: Arc::clone(&api),
        cache: cache.clone(),
        jobs,
        clock: Clock::from_env(),
    });
    runtime::run_owner_controller(api, cache, jobs, reconciler, shutdown).await;
}

struct CronJobs {
    api: Arc<Api>,
    cache: Cache,
    jobs: &'static ResourceType,
    clock: Clock,
}

impl std::fmt::Debug for CronJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronJobs").finish_non_exhaustive()
    }
}

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The name of the Job for the run scheduled at `at`.
pub fn job_name(cronjob: &str, at: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", at.timestamp().div_euclid(60))
}

/// What to do about the schedule, decided from the CronJob and "now".
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Run the time scheduled at this instant.
    Run(DateTime<Utc>),
    /// Nothing due (or the due time is past its starting deadline).
    Wait,
}

/// The run due at `now`: the latest scheduled time since the last one (or since the CronJob
/// was created), unless it is older than `startingDeadlineSeconds`.
pub fn due(
    schedule: &Schedule,
    tz: chrono_tz::Tz,
    last: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    starting_deadline: Option<i64>,
    now: DateTime<Utc>,
) -> Due {
    let mut earliest = last.unwrap_or(created);
    if let Some(deadline) = starting_deadline {
        earliest = earliest.max(now - chrono::Duration::seconds(deadline));
    }
    match schedule.most_recent(earliest, now, tz) {
        Some(at) => {
            let too_late =
                starting_deadline.is_some_and(|d| at < now - chrono::Duration::seconds(d));
            if too_late { Due::Wait } else { Due::Run(at) }
        }
        None => Due::Wait,
    }
}

fn object_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job["metadata"]["name"],
        "namespace": job["metadata"]["namespace"],
        "uid": job["metadata"]["uid"],
        "resourceVersion": job["metadata"]["resourceVersion"],
    })
}

impl CronJobs {
    fn job_target(&self, namespace: &str, name: Option<&str>) -> Target {
        target(self.jobs, namespace, name)
    }

    async fn event(&self, cj: &Value, reason: &str, message: &str) {
        record_event(
            &self.api,
            COMPONENT,
            cj,
            ("batch/v1", "CronJob"),
            reason,
            message,
        )
        .await;
    }

    async fn warning(&self, cj: &Value, reason: &str, message: &str) {
        record_warning(
            &self.api,
            COMPONENT,
            cj,
            ("batch/v1", "CronJob"),
            reason,
            message,
        )
        .await;
    }

    async fn delete_job(&self, cj: &Value, job: &Value) -> Result<()> {
        let namespace = str_of(job, "/metadata/namespace");
        let name = str_of(job, "/metadata/name");
        let options = json!({
            "propagationPolicy": "Background",
            "preconditions": { "uid": job["metadata"]["uid"] },
        });
        match objects::delete(
            &self.api,
            &self.job_target(namespace, Some(name)),
            name,
            &options,
        )
        .await
        {
            Ok(_) => {
                self.event(cj, "SuccessfulDelete", &format!("Deleted job {name}"))
                    .await;
                Ok(())
            }
            Err(e) if e.reason == "NotFound" => Ok(()),
            Err(e) => Err(Error::api(format!("deleting job {name}"), &e)),
        }
    }

    /// Deletes the oldest finished jobs of one kind beyond `limit`.
    async fn prune(&self, cj: &Value, mut finished: Vec<&Value>, limit: usize) -> Result<()> {
        if finished.len() <= limit {
            return Ok(());
        }
        finished.sort_by_key(|j| {
            (
                parse_time(&j["status"]["completionTime"])
                    .or_else(|| parse_time(&j["status"]["startTime"])),
                str_of(j, "/metadata/creationTimestamp").to_owned(),
            )
        });
        let doomed = finished.len() - limit;
        for job in &finished[..doomed] {
            self.delete_job(cj, job).await?;
        }
        Ok(())
    }

    async fn create_job(&self, cj: &Value, at: DateTime<Utc>) -> Result<Value> {
        let namespace = str_of(cj, "/metadata/namespace");
        let name = job_name(str_of(cj, "/metadata/name"), at);
        let template = &cj["spec"]["jobTemplate"];
        let mut annotations = template["metadata"]["annotations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        annotations.insert(
            "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
            json!(format_time(at)),
        );
        let mut metadata = json!({
            "name": name,
            "namespace": namespace,
            "annotations": annotations,
            "ownerReferences": [owner_reference(cj, "batch/v1", "CronJob")],
        });
        if template["metadata"]["labels"].is_object() {
            metadata["labels"] = template["metadata"]["labels"].clone();
        }
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": template["spec"],
        });
        match objects::create(&self.api, &self.job_target(namespace, None), job).await {
            Ok(job) => {
                self.event(cj, "SuccessfulCreate", &format!("Created job {name}"))
                    .await;
                Ok(job)
            }
            // Created before (e.g. the status write failed): the run happened.
            Err(e) if e.reason == "AlreadyExists" => {
                objects::get(&self.api, self.jobs, Some(namespace), &name)
                    .await
                    .map_err(|e| Error::api(format!("reading job {name}"), &e))
            }
            Err(e) => Err(Error::api(format!("creating job {name}"), &e)),
        }
    }

    async fn write_status(&self, cj: &Value, status: Value) -> Result<()> {
        let current = &cj["status"];
        let same = ["active", "lastScheduleTime", "lastSuccessfulTime"]
            .iter()
            .all(|f| {
                let a = &current[f];
                let b = &status[f];
                match (a, b) {
                    (Value::Array(x), Value::Array(y)) => {
                        x.iter().map(|r| &r["uid"]).eq(y.iter().map(|r| &r["uid"]))
                    }
                    (Value::Null, Value::Array(y)) | (Value::Array(y), Value::Null) => y.is_empty(),
                    _ => a == b,
                }
            });
        if same {
            return Ok(());
        }
        put_status(&self.api, self.cache.resource(), cj, status, Pin::Latest).await
    }
}

#[async_trait::async_trait]
impl Reconciler for CronJobs {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn reconcile(&self, key: &ObjectRef) -> Result<Action> {
        let Some(cj) = get_fresh(&self.api, self.cache.resource(), key).await? else {
            return Ok(Action::Done);
        };
        if cj["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Action::Done);
        }
        let spec = &cj["spec"];
        let now = self.clock.now();
        let jobs: Vec<Value> = list_fresh(&self.api, self.jobs, &key.namespace)
            .await?
            .into_iter()
            .filter(|j| controlled_by(j, &cj))
            .collect();
        let mut active: Vec<&Value> = Vec::new();
        let mut succeeded: Vec<&Value> = Vec::new();
        let mut failed: Vec<&Value> = Vec::new();
        for j in &jobs {
            match job::finished(j) {
                Some(("Complete", _)) => succeeded.push(j),
                Some(_) => failed.push(j),
                None if j["metadata"]["deletionTimestamp"].is_string() => {}
                None => active.push(j),
            }
        }
        let mut status = cj["status"].as_object().cloned().unwrap_or_default();
        let last_success = succeeded
            .iter()
            .filter_map(|j| parse_time(&j["status"]["completionTime"]))
            .max();
        if let Some(at) = last_success {
            let previous = status.get("lastSuccessfulTime").and_then(parse_time);
            if previous.is_none_or(|p| p < at) {
                status.insert("lastSuccessfulTime".into(), json!(format_time(at)));
            }
        }

        let history = |field: &str, default: usize| {
            spec[field]
                .as_i64()
                .map_or(default, |v| usize::try_from(v).unwrap_or(0))
        };
        self.prune(&cj, succeeded, history("successfulJobsHistoryLimit", 3))
            .await?;
        self.prune(&cj, failed, history("failedJobsHistoryLimit", 1))
            .await?;

        // As in kube-controller-manager, a zone or schedule that does not parse (an object from
        // before validation was this strict) waits for the spec to change.
        let tz = match spec["timeZone"].as_str() {
            None => chrono_tz::UTC,
            Some(name) => match cron::load_location(name) {
                Ok(tz) => tz.unwrap_or(chrono_tz::UTC),
                Err(e) => {
                    let message = format!("invalid timeZone: {name:?}: {e}");
                    self.warning(&cj, "UnknownTimeZone", &message).await;
                    return Ok(Action::Done);
                }
            },
        };
        let text = str_of(&cj, "/spec/schedule");
        let schedule: Schedule = match text.parse() {
            Ok(s) => s,
            Err(e) => {
                let message = format!("unparseable schedule: {text:?} : {e}");
                self.warning(&cj, "UnparseableSchedule", &message).await;
                return Ok(Action::Done);
            }
        };
        let created = parse_time(&cj["metadata"]["creationTimestamp"]).unwrap_or(now);

        let mut active_refs: Vec<Value> = active.iter().map(|j| object_ref(j)).collect();
        if spec["suspend"].as_bool() != Some(true) {
            let last = status.get("lastScheduleTime").and_then(parse_time);
            if let Due::Run(at) = due(
                &schedule,
                tz,
                last,
                created,
                spec["startingDeadlineSeconds"].as_i64(),
                now,
            ) {
                let name = job_name(&key.name, at);
                let already = jobs.iter().any(|j| str_of(j, "/metadata/name") == name);
                let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
                if already {
                    status.insert("lastScheduleTime".into(), json!(format_time(at)));
                } else if policy == "Forbid" && !active.is_empty() {
                    // Skipped for now; runs when the active job finishes, if still in time.
                    tracing::debug!(cronjob = %key, "a job is still active; skipping");
                } else {
                    if policy == "Replace" {
                        for job in &active {
                            self.delete_job(&cj, job).await?;
                        }
                        active_refs.clear();
                    }
                    let job = self.create_job(&cj, at).await?;
                    active_refs.push(object_ref(&job));
                    status.insert("lastScheduleTime".into(), json!(format_time(at)));
                }
            }
        }
        if active_refs.is_empty() {
            status.remove("active");
        } else {
            status.insert("active".into(), Value::Array(active_refs));
        }
        // The next run counts from the last one: `@every` runs keep their spacing.
        let last = status.get("lastScheduleTime").and_then(parse_time);
        self.write_status(&cj, Value::Object(status)).await?;

        if spec["suspend"].as_bool() == Some(true) {
            return Ok(Action::Done);
        }
        Ok(match schedule.next_run(last.unwrap_or(created), now, tz) {
            Some(next) => Action::RequeueAfter(
                self.clock.real_duration(next - now) + Duration::from_millis(100),
            ),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn schedule(text: &str) -> Schedule {
        text.parse().unwrap()
    }

    #[test]
    fn due_runs_the_latest_missed_time_within_the_deadline() {
        let s = schedule("*/5 * * * *");
        let tz = chrono_tz::UTC;
        let created = utc("2024-03-01T10:00:00Z");
        let now = utc("2024-03-01T10:17:30Z");
        // Never run: the latest time since creation.
        assert_eq!(
            due(&s, tz, None, created, None, now),
            Due::Run(utc("2024-03-01T10:15:00Z"))
        );
        // Already ran at 10:15: nothing.
        let last = Some(utc("2024-03-01T10:15:00Z"));
        assert_eq!(due(&s, tz, last, created, None, now), Due::Wait);
        // Ran at 10:05 and missed 10:10 and 10:15: runs 10:15 if within the deadline.
        let last = Some(utc("2024-03-01T10:05:00Z"));
        assert_eq!(
            due(&s, tz, last, created, Some(200), now),
            Due::Run(utc("2024-03-01T10:15:00Z"))
        );
        assert_eq!(due(&s, tz, last, created, Some(60), now), Due::Wait);
        // Nothing scheduled before creation counts.
        let now = utc("2024-03-01T10:04:00Z");
        assert_eq!(due(&s, tz, None, created, None, now), Due::Wait);
        assert_eq!(
            job_name("backup", utc("2024-03-01T10:15:00Z")),
            "backup-28488135"
        );
    }

    /// Issue 12, item 7: validation took `@hourly` and the controller's own parser refused it
    /// (`UnparseableSchedule`), so the job never ran.
    #[test]
    fn macro_schedules_come_due() {
        let tz = chrono_tz::UTC;
        let created = utc("2024-03-01T10:20:00Z");
        let hourly = schedule("@hourly");
        assert_eq!(
            due(
                &hourly,
                tz,
                None,
                created,
                None,
                utc("2024-03-01T10:59:59Z")
            ),
            Due::Wait
        );
        assert_eq!(
            due(
                &hourly,
                tz,
                None,
                created,
                None,
                utc("2024-03-01T11:00:01Z")
            ),
            Due::Run(utc("2024-03-01T11:00:00Z"))
        );
        assert_eq!(
            due(
                &schedule("@daily"),
                tz,
                None,
                created,
                None,
                utc("2024-03-03T08:00:00Z")
            ),
            Due::Run(utc("2024-03-03T00:00:00Z"))
        );
        // `@every` counts from creation, then from the last run.
        let every = schedule("@every 1h30m");
        assert_eq!(
            due(&every, tz, None, created, None, utc("2024-03-01T11:49:00Z")),
            Due::Wait
        );
        assert_eq!(
            due(&every, tz, None, created, None, utc("2024-03-01T11:50:10Z")),
            Due::Run(utc("2024-03-01T11:50:00Z"))
        );
        let last = Some(utc("2024-03-01T11:50:00Z"));
        assert_eq!(
            due(&every, tz, last, created, None, utc("2024-03-01T14:00:00Z")),
            Due::Run(utc("2024-03-01T13:20:00Z"))
        );
        // A legacy CRON_TZ prefix wins over the zone passed in.
        let tokyo = schedule("CRON_TZ=Asia/Tokyo @daily");
        assert_eq!(
            due(
                &tokyo,
                chrono_tz::Europe::Paris,
                None,
                created,
                None,
                utc("2024-03-02T00:00:00Z")
            ),
            Due::Run(utc("2024-03-01T15:00:00Z"))
        );
    }

    #[test]
    fn a_fast_clock_runs_faster() {
        let clock = Clock::fast(60.0);
        assert_eq!(
            clock.real_duration(chrono::Duration::seconds(60)),
            Duration::from_secs(1)
        );
        let real = Clock::real();
        assert_eq!(
            real.real_duration(chrono::Duration::seconds(60)),
            Duration::from_secs(60)
        );
    }
}
