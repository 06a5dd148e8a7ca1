//! Validation of `batch/v1`: Job and CronJob.

use super::{
    BadValue, ErrorList, FieldError, NameRule, go_map, go_selector, immutable, non_negative,
    validate_annotations, validate_label_selector, validate_labels, validate_object_meta,
    validate_object_meta_update,
};
use crate::{
    batch_v1::{CronJob, Job, JobSpec},
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
    let spec = &cj.spec;
    if spec.schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule"));
    } else if let Err(msg) = check_schedule(&spec.schedule) {
        errs.push(FieldError::invalid("spec.schedule", &spec.schedule, msg));
    }
    if let Some(tz) = &spec.time_zone {
        let valid = !tz.is_empty()
            && !tz.starts_with('/')
            && !tz.split('/').any(|p| p.is_empty() || p == "." || p == "..")
            && tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !valid {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                tz,
                "unknown time zone",
            ));
        }
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
        non_negative(&mut errs, "spec.startingDeadlineSeconds", s);
    }
    for (field, value) in [
        (
            "successfulJobsHistoryLimit",
            spec.successful_jobs_history_limit,
        ),
        ("failedJobsHistoryLimit", spec.failed_jobs_history_limit),
    ] {
        if let Some(v) = value {
            non_negative(&mut errs, &format!("spec.{field}"), v.into());
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
    validate_job_spec(&spec.job_template.spec, "spec.jobTemplate.spec", &mut errs);
    errs
}

/// Checks a cron schedule: five fields (minute hour day-of-month month day-of-week) or a
/// descriptor (`@hourly`, `@every 1h30m`). Messages follow the parser Kubernetes uses.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(descriptor) = s.strip_prefix('@') {
        return match descriptor {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            d if d.starts_with("every ") && is_go_duration(d["every ".len()..].trim()) => Ok(()),
            _ => Err(format!("unrecognized descriptor: {s}")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let bounds: [(u32, u32, &[&str], bool); 5] = [
        (0, 59, &[], false),
        (0, 23, &[], false),
        (1, 31, &[], true),
        (1, 12, MONTHS, false),
        (0, 6, DAYS, true),
    ];
    for (field, (min, max, names, question)) in fields.iter().zip(bounds) {
        for expr in field.split(',') {
            check_cron_range(expr, min, max, names, question)?;
        }
    }
    Ok(())
}

fn check_cron_range(
    expr: &str,
    min: u32,
    max: u32,
    names: &[&str],
    question: bool,
) -> Result<(), String> {
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (expr, None),
    };
    let value = |v: &str| -> Result<u32, String> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + min);
        }
        v.parse::<u32>().map_err(|_| {
            format!("failed to parse int from {v}: strconv.Atoi: parsing {v:?}: invalid syntax")
        })
    };
    let (start, end) = if range == "*" || (question && range == "?") {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        (value(a)?, value(b)?)
    } else {
        let v = value(range)?;
        (v, if step.is_some() { max } else { v })
    };
    if start < min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({min}): {expr}"
        ));
    }
    if end > max {
        return Err(format!(
            "end of range ({end}) above maximum ({max}): {expr}"
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if let Some(step) = step
        && step.parse::<u32>().map_or(true, |s| s == 0)
    {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(())
}

/// A Go duration such as `1h30m`, `90s`, `1.5h`.
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return false;
        }
        rest = &rest[num_end..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(*u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert_eq!(check_schedule(ok), Ok(()), "{ok}");
        }
        for (bad, msg) in [
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("0 0 0 * *", "beginning of range (0) below minimum (1): 0"),
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
                "TZ=UTC 0 * * * *",
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
        ] {
            assert_eq!(check_schedule(bad), Err(msg.to_owned()), "{bad}");
        }
        assert!(
            check_schedule("x * * * *")
                .unwrap_err()
                .starts_with("failed to parse int from x")
        );
        assert!(check_schedule("0 0 * * ?").is_ok());
        assert!(check_schedule("? 0 * * *").is_err());
    }
}
