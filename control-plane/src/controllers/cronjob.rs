//! The CronJob controller: creates a Job for every time the schedule (five cron fields,
//! evaluated in `spec.timeZone`) comes round, named `<cronjob>-<minutes since the epoch>`;
//! honours `concurrencyPolicy`, `startingDeadlineSeconds` and `suspend`, prunes finished Jobs
//! beyond the history limits and reports `active`, `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! "Now" comes from a [`Clock`]. For tests only, `APIARY_CRONJOB_CLOCK_SPEEDUP=<factor>` makes
//! the controller's clock run that many times faster than real time (from the moment it
//! starts), so that minutes pass in seconds.

use std::{str::FromStr, sync::Arc, time::Duration};

use apiary_api::meta::ObjectRef;
use chrono::{DateTime, Datelike as _, NaiveDate, TimeZone as _, Timelike as _, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    Pin, controlled_by, get_fresh, job, list_fresh, owner_reference, put_status, record_event,
    resource,
    runtime::{self, Action, Cache, Error, Reconciler, Result},
    str_of, target,
};
use crate::apiserver::{Api, objects, path::Target, resources::ResourceType};

const COMPONENT: &str = "cronjob-controller";
/// The environment variable that speeds the controller's clock up (tests only).
pub const SPEEDUP_ENV: &str = "APIARY_CRONJOB_CLOCK_SPEEDUP";

// ---------------------------------------------------------------------------------------------
// Schedules

/// A parsed five-field cron schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether day-of-month or day-of-week was `*` (then both must match; otherwise either).
    day_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn parse_value(text: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(u32::try_from(i).unwrap_or(0) + offset);
    }
    text.parse()
        .map_err(|_| format!("failed to parse int from {text}"))
}

/// Parses one field into a bit set of the values in `min..=max`; also whether it was a star.
fn parse_field(
    field: &str,
    (min, max): (u32, u32),
    names: &[&str],
    offset: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (item, None),
        };
        let (start, end) = if range == "*" || range == "?" {
            star = star || step.is_none_or(|s| s == 1);
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                parse_value(a, names, offset)?,
                parse_value(b, names, offset)?,
            )
        } else {
            let v = parse_value(range, names, offset)?;
            (v, if step.is_some() { max } else { v })
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {item}"));
        }
        if start < min || end > max || start > end {
            return Err(format!("beyond range ({min}-{max}) or inverted: {item}"));
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(format!("expected exactly 5 fields, found {}", fields.len()));
        };
        let (minutes, _) = parse_field(minute, (0, 59), &[], 0)?;
        let (hours, _) = parse_field(hour, (0, 23), &[], 0)?;
        let (days_of_month, dom_star) = parse_field(dom, (1, 31), &[], 0)?;
        let (months, _) = parse_field(month, (1, 12), &MONTHS, 1)?;
        let (mut days_of_week, dow_star) = parse_field(dow, (0, 7), &DAYS, 0)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        Ok(Self {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            day_star: dom_star || dow_star,
        })
    }
}

impl Schedule {
    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `after`, evaluated in `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let start_date = local.date();
        // Five years cover every satisfiable schedule (e.g. 29 February on a Monday is
        // rarer, but Kubernetes gives up too).
        for day in 0..366 * 5 {
            let date = start_date + chrono::Duration::days(day);
            if self.months & (1 << date.month()) == 0 || !self.day_matches(date) {
                continue;
            }
            for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                if day == 0 && hour < local.hour() {
                    continue;
                }
                for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                    let Some(naive) = date.and_hms_opt(hour, minute, 0) else {
                        continue;
                    };
                    // A time in a DST gap does not exist; an ambiguous one runs the first time.
                    let Some(at) = tz.from_local_datetime(&naive).earliest() else {
                        continue;
                    };
                    let at = at.with_timezone(&Utc);
                    if at > after {
                        return Some(at);
                    }
                }
            }
        }
        None
    }

    /// The latest scheduled time in `(earliest, now]`, if any.
    pub fn most_recent(
        &self,
        earliest: DateTime<Utc>,
        now: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Option<DateTime<Utc>> {
        // Far in the past (a CronJob suspended for years): only the last day can matter.
        let earliest = earliest.max(now - chrono::Duration::days(400));
        let mut last = None;
        let mut t = earliest;
        while let Some(next) = self.next_after(t, tz) {
            if next > now {
                break;
            }
            last = Some(next);
            t = next;
        }
        last
    }
}

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

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
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

        let schedule: Schedule = match str_of(&cj, "/spec/schedule").parse() {
            Ok(s) => s,
            Err(message) => {
                self.event(&cj, "UnparseableSchedule", &message).await;
                return Ok(Action::Done);
            }
        };
        let tz = match spec["timeZone"].as_str() {
            None => chrono_tz::UTC,
            Some(name) => match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.event(&cj, "UnknownTimeZone", &format!("invalid timeZone: {name}"))
                        .await;
                    return Ok(Action::Done);
                }
            },
        };

        let mut active_refs: Vec<Value> = active.iter().map(|j| object_ref(j)).collect();
        if spec["suspend"].as_bool() != Some(true) {
            let last = status.get("lastScheduleTime").and_then(parse_time);
            let created = parse_time(&cj["metadata"]["creationTimestamp"]).unwrap_or(now);
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
        self.write_status(&cj, Value::Object(status)).await?;

        if spec["suspend"].as_bool() == Some(true) {
            return Ok(Action::Done);
        }
        Ok(match schedule.next_after(now, tz) {
            Some(next) => Action::RequeueAfter(
                self.clock.real_duration(next - now) + Duration::from_millis(100),
            ),
            None => Action::Done,
        })
    }
}

/// The distinct values of a bit set, for tests and messages.
#[cfg(test)]
fn values(bits: u64) -> std::collections::BTreeSet<u32> {
    (0..64).filter(|b| bits & (1 << b) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str, tz: &str) -> String {
        let s: Schedule = schedule.parse().unwrap();
        let tz: chrono_tz::Tz = tz.parse().unwrap();
        format_time(s.next_after(utc(after), tz).unwrap())
    }

    #[test]
    fn fields_parse_lists_ranges_steps_and_names() {
        let s: Schedule = "*/15 9-17/4 1,15 JAN-mar mon-FRI".parse().unwrap();
        assert_eq!(values(s.minutes), [0, 15, 30, 45].into());
        assert_eq!(values(s.hours), [9, 13, 17].into());
        assert_eq!(values(s.days_of_month), [1, 15].into());
        assert_eq!(values(s.months), [1, 2, 3].into());
        assert_eq!(values(s.days_of_week), [1, 2, 3, 4, 5].into());
        assert!(!s.day_star);
        let s: Schedule = "0 0 * * 7".parse().unwrap();
        assert_eq!(values(s.days_of_week), [0].into());
        assert!(s.day_star);
        let s: Schedule = "5/20 * * * *".parse().unwrap();
        assert_eq!(values(s.minutes), [5, 25, 45].into());
        for bad in [
            "* * * *",
            "60 * * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "x * * * *",
            "5-1 * * * *",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn next_times_in_utc() {
        assert_eq!(
            next("* * * * *", "2024-03-01T10:00:30Z", "UTC"),
            "2024-03-01T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-03-01T10:01:00Z", "UTC"),
            "2024-03-01T10:02:00Z"
        );
        assert_eq!(
            next("30 2 * * *", "2024-03-01T10:00:00Z", "UTC"),
            "2024-03-02T02:30:00Z"
        );
        // 29 February, the next leap year.
        assert_eq!(
            next("0 0 29 2 *", "2024-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00Z"
        );
        // 2024-03-01 is a Friday: next Monday.
        assert_eq!(
            next("0 9 * * MON", "2024-03-01T00:00:00Z", "UTC"),
            "2024-03-04T09:00:00Z"
        );
        // Day of month OR day of week when both are restricted: the 10th, or a Monday.
        assert_eq!(
            next("0 0 10 * 1", "2024-03-01T00:00:00Z", "UTC"),
            "2024-03-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 1 JAN *", "2024-03-01T00:00:00Z", "UTC"),
            "2025-01-01T00:00:00Z"
        );
    }

    #[test]
    fn next_times_in_time_zones() {
        // 09:00 in Tokyo (UTC+9, no DST) is 00:00 UTC.
        assert_eq!(
            next("0 9 * * *", "2024-06-01T12:00:00Z", "Asia/Tokyo"),
            "2024-06-02T00:00:00Z"
        );
        // 09:00 in New York in June (EDT, UTC-4) is 13:00 UTC.
        assert_eq!(
            next("0 9 * * *", "2024-06-01T12:00:00Z", "America/New_York"),
            "2024-06-01T13:00:00Z"
        );
        // ... and in January (EST, UTC-5) 14:00 UTC.
        assert_eq!(
            next("0 9 * * *", "2024-01-10T15:00:00Z", "America/New_York"),
            "2024-01-11T14:00:00Z"
        );
        // Kolkata is UTC+5:30: 00:00 local is 18:30 UTC the day before.
        assert_eq!(
            next("0 0 * * *", "2024-06-01T12:00:00Z", "Asia/Kolkata"),
            "2024-06-01T18:30:00Z"
        );
        // Monday in Tokyo starts Sunday 15:00 UTC.
        assert_eq!(
            next("0 0 * * 1", "2024-06-01T00:00:00Z", "Asia/Tokyo"),
            "2024-06-02T15:00:00Z"
        );
    }

    #[test]
    fn due_runs_the_latest_missed_time_within_the_deadline() {
        let s: Schedule = "*/5 * * * *".parse().unwrap();
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
