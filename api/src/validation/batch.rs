//! Validation of `batch/v1`: Job and CronJob.

use super::{
    BadValue, ErrorList, FieldError, NameRule, go_map, go_selector, immutable, non_negative,
    validate_annotations, validate_label_selector, validate_labels, validate_object_meta,
    validate_object_meta_update,
};
use crate::{
    batch_v1::{CronJob, CronJobSpec, Job, JobSpec},
    cron::{self, Schedule},
    validation::core::validate_pod_spec,
};

/// Job pods must not restart in place forever.
const JOB_RESTART_POLICIES: &[&str] = &["OnFailure", "Never"];

/// A job spec at `path` (`spec` or `spec.jobTemplate.spec`).
fn validate_job_spec(spec: &JobSpec, path: &str, errs: &mut ErrorList) {
    for (field, value) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
        ("backoffLimitPerIndex", spec.backoff_limit_per_index),
        ("maxFailedIndexes", spec.max_failed_indexes),
        ("ttlSecondsAfterFinished", spec.ttl_seconds_after_finished),
    ] {
        if let Some(v) = value {
            non_negative(errs, &format!("{path}.{field}"), v.into());
        }
    }
    if let Some(d) = spec.active_deadline_seconds {
        non_negative(errs, &format!("{path}.activeDeadlineSeconds"), d);
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.completions.is_none() {
                errs.push(
                    FieldError::required(format!("{path}.completions"))
                        .with_detail("when completion mode is Indexed"),
                );
            }
        }
        Some(other) => errs.push(FieldError::not_supported(
            format!("{path}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    let template = &spec.template;
    let tp = format!("{path}.template");
    // The API server generates the selector of jobs without `manualSelector`; check it when set.
    if let Some(sel) = &spec.selector {
        errs.extend(validate_label_selector(sel, &format!("{path}.selector")));
        if !sel.is_empty() && !sel.matches(&template.metadata.labels) {
            errs.push(FieldError::invalid(
                format!("{tp}.metadata.labels"),
                go_map(&template.metadata.labels),
                "`selector` does not match template `labels`",
            ));
        }
    } else if spec.manual_selector == Some(true) {
        errs.push(FieldError::required(format!("{path}.selector")));
    }
    errs.extend(validate_labels(
        &template.metadata.labels,
        &format!("{tp}.metadata.labels"),
    ));
    errs.extend(validate_annotations(
        &template.metadata.annotations,
        &format!("{tp}.metadata.annotations"),
    ));
    errs.extend(validate_pod_spec(&template.spec, &format!("{tp}.spec")));
    let policy = match template.spec.restart_policy.as_str() {
        "" => "Always", // what pod defaulting would make it
        p => p,
    };
    if !JOB_RESTART_POLICIES.contains(&policy) {
        errs.push(FieldError::not_supported(
            format!("{tp}.spec.restartPolicy"),
            policy,
            JOB_RESTART_POLICIES,
        ));
    }
}

/// A Job: counts, completion mode, and a pod template that restarts `OnFailure` or `Never`.
pub fn validate_job(job: &Job) -> ErrorList {
    let mut errs = validate_object_meta(&job.metadata, true, NameRule::Subdomain);
    validate_job_spec(&job.spec, "spec", &mut errs);
    errs
}

/// A Job update: `spec.selector`, `spec.template`, `spec.completions` and
/// `spec.completionMode` are immutable.
pub fn validate_update_job(old: &Job, new: &Job) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_job(new));
    let (o, n) = (&old.spec, &new.spec);
    immutable(&mut errs, "spec.selector", &o.selector, &n.selector, || {
        go_selector(n.selector.as_ref())
    });
    immutable(&mut errs, "spec.template", &o.template, &n.template, || {
        BadValue::Raw(serde_json::to_string(&n.template).unwrap_or_default())
    });
    immutable(
        &mut errs,
        "spec.completions",
        &o.completions,
        &n.completions,
        || n.completions.map_or(BadValue::Omitted, BadValue::from),
    );
    immutable(
        &mut errs,
        "spec.completionMode",
        &o.completion_mode,
        &n.completion_mode,
        || {
            n.completion_mode
                .as_deref()
                .map_or(BadValue::Omitted, BadValue::from)
        },
    );
    errs
}

/// The longest CronJob name: its jobs append an 11-character suffix and must stay ≤ 63.
const CRON_JOB_NAME_MAX: usize = 52;

/// A CronJob: schedule, time zone, concurrency policy, history limits and the job template.
pub fn validate_cron_job(cj: &CronJob) -> ErrorList {
    let mut errs = validate_object_meta(&cj.metadata, true, NameRule::Subdomain);
    if cj.metadata.name.len() > CRON_JOB_NAME_MAX {
        errs.push(FieldError::invalid(
            "metadata.name",
            &cj.metadata.name,
            format!("must be no more than {CRON_JOB_NAME_MAX} characters"),
        ));
    }
    validate_cron_job_spec(&cj.spec, None, &mut errs);
    errs
}

/// A CronJob update. As in Kubernetes, the name may be longer than a new CronJob's (older
/// objects must stay updatable), a `TZ=`/`CRON_TZ=` prefix may stay if the old schedule had
/// one, and `spec.timeZone` is checked only when it changes.
pub fn validate_update_cron_job(old: &CronJob, new: &CronJob) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_object_meta(
        &new.metadata,
        true,
        NameRule::Subdomain,
    ));
    validate_cron_job_spec(&new.spec, Some(&old.spec), &mut errs);
    errs
}

fn validate_cron_job_spec(spec: &CronJobSpec, old: Option<&CronJobSpec>, errs: &mut ErrorList) {
    if spec.schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule"));
    } else {
        let allow_tz = old.is_some_and(|o| o.schedule.contains("TZ"));
        validate_schedule(&spec.schedule, allow_tz, spec.time_zone.as_deref(), errs);
    }
    if old.is_none_or(|o| o.time_zone != spec.time_zone)
        && let Some(tz) = &spec.time_zone
    {
        validate_time_zone(tz, errs);
    }
    match spec.concurrency_policy.as_str() {
        "" | "Allow" | "Forbid" | "Replace" => {}
        other => errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            other,
            &["Allow", "Forbid", "Replace"],
        )),
    }
    if let Some(s) = spec.starting_deadline_seconds {
        non_negative(errs, "spec.startingDeadlineSeconds", s);
    }
    for (field, value) in [
        (
            "successfulJobsHistoryLimit",
            spec.successful_jobs_history_limit,
        ),
        ("failedJobsHistoryLimit", spec.failed_jobs_history_limit),
    ] {
        if let Some(v) = value {
            non_negative(errs, &format!("spec.{field}"), v.into());
        }
    }
    let meta = &spec.job_template.metadata;
    errs.extend(validate_labels(
        &meta.labels,
        "spec.jobTemplate.metadata.labels",
    ));
    errs.extend(validate_annotations(
        &meta.annotations,
        "spec.jobTemplate.metadata.annotations",
    ));
    validate_job_spec(&spec.job_template.spec, "spec.jobTemplate.spec", errs);
}

/// Kubernetes' `validateScheduleFormat`: the schedule must parse (with the parser the
/// controller runs), and a `TZ=`/`CRON_TZ=` prefix (anything containing `TZ`, as Kubernetes
/// checks) is allowed only when the old schedule had one, and never with `spec.timeZone`.
fn validate_schedule(
    schedule: &str,
    allow_tz: bool,
    time_zone: Option<&str>,
    errs: &mut ErrorList,
) {
    const PATH: &str = "spec.schedule";
    if let Err(e) = schedule.parse::<Schedule>() {
        errs.push(FieldError::invalid(PATH, schedule, e.to_string()));
    }
    if schedule.contains("TZ") {
        if !allow_tz {
            errs.push(FieldError::invalid(
                PATH,
                schedule,
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        } else if time_zone.is_some() {
            errs.push(FieldError::invalid(
                PATH,
                schedule,
                "cannot use both timeZone field and TZ or CRON_TZ in schedule",
            ));
        }
    }
}

/// Kubernetes' `validateTimeZone`: IANA-style name parts, not `Local`, and a zone we know.
fn validate_time_zone(tz: &str, errs: &mut ErrorList) {
    const PATH: &str = "spec.timeZone";
    if tz.is_empty() {
        errs.push(FieldError::invalid(
            PATH,
            tz,
            "timeZone must be nil or non-empty string",
        ));
        return;
    }
    // `^[A-Za-z\.\-_0-9+]{1,14}$` per part; not `.`, `..`, nor starting with `-`.
    let bad_part = |p: &str| {
        p == "."
            || p == ".."
            || p.starts_with('-')
            || !(1..=14).contains(&p.len())
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    };
    if tz.split('/').any(bad_part) {
        errs.push(FieldError::invalid(
            PATH,
            tz,
            format!("unknown time zone {tz}"),
        ));
        return;
    }
    if tz.eq_ignore_ascii_case("Local") {
        errs.push(FieldError::invalid(
            PATH,
            tz,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    }
    if let Err(message) = cron::load_location(tz) {
        errs.push(FieldError::invalid(PATH, tz, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of a new CronJob's schedule.
    fn schedule_errors(schedule: &str) -> Vec<String> {
        let mut errs = ErrorList::new();
        validate_schedule(schedule, false, None, &mut errs);
        errs.iter().map(|e| e.detail.clone()).collect()
    }

    fn cron_job(schedule: &str, time_zone: Option<&str>) -> CronJob {
        let mut cj: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backup", "namespace": "default"},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}
        }))
        .unwrap();
        cj.spec.time_zone = time_zone.map(str::to_owned);
        cj
    }

    fn messages(errs: &ErrorList) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn cron_schedules() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * 0",
            "30 2 1-15/2 JAN-jun mon,wed",
            "0 0 ? * *",
            "@hourly",
            "@every 1h30m",
            "5 4 * * sun",
            "5/15 * * * *",
            "0 0 * * ?",
            // robfig takes `?` in any field.
            "? 0 * * *",
        ] {
            assert!(schedule_errors(ok).is_empty(), "{ok}");
        }
        for (bad, msg) in [
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("0-70 * * * *", "end of range (70) above maximum (59): 0-70"),
            ("0 0 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("0 0 * * 7", "end of range (7) above maximum (6): 7"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            (
                "TZ=UTC 0 * * * *",
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
        ] {
            assert_eq!(schedule_errors(bad), [msg], "{bad}");
        }
    }

    #[test]
    fn every_macro_and_every_duration_is_a_valid_schedule() {
        for ok in [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@every 90s",
            "@every 1h30m",
            "@every 1.5h",
        ] {
            assert!(validate_cron_job(&cron_job(ok, None)).is_empty(), "{ok}");
        }
        assert_eq!(
            messages(&validate_cron_job(&cron_job("@every 1d", None))),
            [
                "spec.schedule: Invalid value: \"@every 1d\": failed to parse duration @every 1d: time: unknown unit \"d\" in duration \"1d\""
            ]
        );
    }

    #[test]
    fn tz_in_schedule_only_on_objects_that_had_it() {
        const NO_TZ: &str = "cannot use TZ or CRON_TZ in schedule, use timeZone field instead";
        // New objects: never, and a bad zone is reported as well.
        assert_eq!(
            messages(&validate_cron_job(&cron_job("CRON_TZ=UTC 0 * * * *", None))),
            [format!(
                "spec.schedule: Invalid value: \"CRON_TZ=UTC 0 * * * *\": {NO_TZ}"
            )]
        );
        assert_eq!(
            messages(&validate_cron_job(&cron_job("TZ=Nowhere 0 * * * *", None))),
            [
                "spec.schedule: Invalid value: \"TZ=Nowhere 0 * * * *\": provided bad location Nowhere: unknown time zone Nowhere".to_owned(),
                format!("spec.schedule: Invalid value: \"TZ=Nowhere 0 * * * *\": {NO_TZ}"),
            ]
        );
        // Updates of an object that had one: allowed, even a different zone…
        let legacy = cron_job("TZ=Europe/Paris 0 * * * *", None);
        let mut new = legacy.clone();
        new.spec.schedule = "CRON_TZ=Asia/Tokyo @daily".into();
        assert!(validate_update_cron_job(&legacy, &new).is_empty());
        // … but not together with spec.timeZone.
        new.spec.time_zone = Some("Asia/Tokyo".into());
        assert_eq!(
            messages(&validate_update_cron_job(&legacy, &new)),
            [
                "spec.schedule: Invalid value: \"CRON_TZ=Asia/Tokyo @daily\": cannot use both timeZone field and TZ or CRON_TZ in schedule"
            ]
        );
        // An object that had none cannot gain one.
        let plain = cron_job("0 * * * *", None);
        let mut new = plain.clone();
        new.spec.schedule = "TZ=UTC 0 * * * *".into();
        assert_eq!(
            messages(&validate_update_cron_job(&plain, &new)),
            [format!(
                "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": {NO_TZ}"
            )]
        );
        // Updates check the schedule with the same parser.
        new.spec.schedule = "@hourly".into();
        assert!(validate_update_cron_job(&plain, &new).is_empty());
        new.spec.schedule = "@hourlyish".into();
        assert_eq!(
            messages(&validate_update_cron_job(&plain, &new)),
            ["spec.schedule: Invalid value: \"@hourlyish\": unrecognized descriptor: @hourlyish"]
        );
    }

    #[test]
    fn time_zones() {
        for ok in [
            "Europe/Paris",
            "America/Argentina/Buenos_Aires",
            "UTC",
            "Etc/GMT+5",
        ] {
            assert!(
                validate_cron_job(&cron_job("0 9 * * *", Some(ok))).is_empty(),
                "{ok}"
            );
        }
        for (tz, msg) in [
            ("X", "unknown time zone X"),
            ("Europe/Atlantis", "unknown time zone Europe/Atlantis"),
            ("europe/paris", "unknown time zone europe/paris"),
            ("../etc/passwd", "unknown time zone ../etc/passwd"),
            ("Europe/Paris Bis", "unknown time zone Europe/Paris Bis"),
            (
                "America/VeryLongCityName",
                "unknown time zone America/VeryLongCityName",
            ),
            ("", "timeZone must be nil or non-empty string"),
            (
                "Local",
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ),
        ] {
            assert_eq!(
                messages(&validate_cron_job(&cron_job("0 9 * * *", Some(tz)))),
                [format!("spec.timeZone: Invalid value: \"{tz}\": {msg}")],
                "{tz}"
            );
        }
        // Updates check the zone only when it changes (an old object keeps working).
        let old = cron_job("0 9 * * *", Some("Europe/Atlantis"));
        let mut new = old.clone();
        new.spec.schedule = "0 10 * * *".into();
        assert!(validate_update_cron_job(&old, &new).is_empty());
        new.spec.time_zone = Some("Mars/Olympus".into());
        assert_eq!(
            messages(&validate_update_cron_job(&old, &new)),
            ["spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"]
        );
    }

    #[test]
    fn long_names_can_still_be_updated() {
        let mut old = cron_job("@daily", None);
        old.metadata.name = "x".repeat(60);
        assert_eq!(validate_cron_job(&old).len(), 1);
        let mut new = old.clone();
        new.spec.schedule = "@hourly".into();
        assert!(validate_update_cron_job(&old, &new).is_empty());
    }
}
