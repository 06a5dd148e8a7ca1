//! End-to-end: the CronJob controller through the real `kubectl`, with the controller's clock
//! sped up (`APIARY_CRONJOB_CLOCK_SPEEDUP`, in the control plane's environment) so that a minute
//! passes in three seconds.

use crate::support;

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::ControlPlane;

fn wait_for<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(300));
    }
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn name(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap().to_owned()
}

fn cronjob(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}
spec:
  schedule: "* * * * *"
  timeZone: Europe/Paris
{extra}
  jobTemplate:
    metadata:
      labels: {{cron: {name}}}
    spec:
      template:
        metadata:
          labels: {{cron: {name}}}
        spec:
          restartPolicy: Never
          containers:
          - name: work
            image: localhost/busybox:1
"#
    )
}

fn jobs(cp: &ControlPlane, cron: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "jobs", "-l", &format!("cron={cron}"), "-o", "json"]))
}

fn complete(job: &Value) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Complete" && c["status"] == "True")
}

/// Marks every running pod of the CronJob's jobs Succeeded.
fn succeed_pods(cp: &ControlPlane, cron: &str) {
    let pods =
        items(&cp.kubectl_json(&["get", "pods", "-l", &format!("cron={cron}"), "-o", "json"]));
    for pod in pods {
        if pod["status"]["phase"] == "Succeeded" {
            continue;
        }
        // The pod may be gone (pruned with its job) meanwhile.
        let _ = cp
            .kubectl(&[
                "patch",
                "pod",
                &name(&pod),
                "--subresource=status",
                "--type=merge",
                "-p",
                &json!({ "status": { "phase": "Succeeded" } }).to_string(),
            ])
            .ok();
    }
}

#[test]
fn cronjobs_run_on_schedule_forbid_overlap_and_prune_history() {
    let cp = ControlPlane::start_with_env(&[], &[("APIARY_CRONJOB_CLOCK_SPEEDUP", "20")]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &cronjob(
            "tick",
            "  successfulJobsHistoryLimit: 1\n  failedJobsHistoryLimit: 1",
        ),
    )
    .success();
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &cronjob("solo", "  concurrencyPolicy: Forbid"),
    )
    .success();
    let cj = cp.kubectl_json(&["get", "cronjob", "tick", "-o", "json"]);
    let uid = cj["metadata"]["uid"].as_str().unwrap().to_owned();

    // tick: jobs come every (sped-up) minute; finished ones beyond the limit are pruned.
    let started = Instant::now();
    let created = |cp: &ControlPlane| {
        items(&cp.kubectl_json(&["get", "events", "-o", "json"]))
            .iter()
            .filter(|e| e["reason"] == "SuccessfulCreate" && e["involvedObject"]["name"] == "tick")
            .count()
    };
    wait_for(120, "4 runs of tick", || {
        succeed_pods(&cp, "tick");
        (created(&cp) >= 4).then_some(())
    });
    let first = jobs(&cp, "tick");
    for job in &first {
        let job_name = name(job);
        let minutes: i64 = job_name.strip_prefix("tick-").unwrap().parse().unwrap();
        assert!(minutes > 28_000_000, "{job_name}");
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "CronJob");
        assert_eq!(owner["uid"], uid.as_str());
    }
    wait_for(60, "tick's history pruned to 1", || {
        succeed_pods(&cp, "tick");
        let jobs = jobs(&cp, "tick");
        (jobs.iter().filter(|j| complete(j)).count() <= 1
            && jobs.len() <= 3
            && items(&cp.kubectl_json(&["get", "events", "-o", "json"]))
                .iter()
                .any(|e| {
                    e["reason"] == "SuccessfulDelete" && e["involvedObject"]["name"] == "tick"
                }))
        .then_some(())
    });
    let status = cp.kubectl_json(&["get", "cronjob", "tick", "-o", "json"])["status"].clone();
    assert!(status["lastScheduleTime"].is_string(), "{status}");
    assert!(status["lastSuccessfulTime"].is_string(), "{status}");
    eprintln!("tick: 4 runs and pruning in {:?}", started.elapsed());

    // solo: its first job never finishes, so no other starts.
    let solo = jobs(&cp, "solo");
    assert_eq!(solo.len(), 1, "Forbid: one job at a time: {solo:#?}");
    let status = cp.kubectl_json(&["get", "cronjob", "solo", "-o", "json"])["status"].clone();
    assert_eq!(
        status["active"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["active"][0]["name"], name(&solo[0]).as_str());
    // Once it finishes, the next run starts.
    wait_for(60, "a second solo job", || {
        succeed_pods(&cp, "solo");
        (jobs(&cp, "solo").len() >= 2).then_some(())
    });
    cp.kubectl(&["get", "cronjobs"]).success();
}
