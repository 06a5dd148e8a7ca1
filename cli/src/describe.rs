//! `apiary describe`: one object in detail for a person: its metadata, its spec and status as
//! indented YAML, and the events about it.

use std::io::Write;

use anyhow::bail;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{
    Outcome, Session, age, apply::LAST_APPLIED, discovery::ApiResource, report::Failures,
    table::Table,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE [NAME…]` or `TYPE/NAME…`; without names, every object of the type.
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub args: Vec<String>,
    /// Label selector, when no names are given.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
}

/// The width of the labels of the first lines (`CreationTimestamp:` and two spaces).
const LABEL_WIDTH: usize = 20;

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let discovery = session.discover().await?;
    let targets = discovery.targets(&args.args)?;
    let client = &session.client;
    let namespace = session.namespace.as_str();
    let mut failures = Failures::default();
    let mut objects = Vec::new();
    for target in &targets {
        let resource = target.resource;
        if target.names.is_empty() {
            let mut query = Vec::new();
            if let Some(selector) = &args.selector {
                query.push(("labelSelector", selector.as_str()));
            }
            let list = client
                .get(&resource.path(Some(namespace), None), &query)
                .await?;
            for item in list["items"].as_array().into_iter().flatten() {
                objects.push((resource, item.clone()));
            }
        }
        for name in &target.names {
            match client
                .get(&resource.path(Some(namespace), Some(name)), &[])
                .await
            {
                Ok(object) => objects.push((resource, object)),
                Err(e) => failures.report(e.into()),
            }
        }
    }
    if objects.is_empty() && !failures.any() {
        if targets.iter().all(|t| t.names.is_empty()) {
            eprintln!("No resources found in {namespace} namespace.");
            return Ok(Outcome::Success);
        }
        bail!("nothing to describe");
    }
    let now = Utc::now();
    for (i, (resource, object)) in objects.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
            writeln!(out)?;
        }
        let events = match events_of(session, resource, object).await {
            Ok(events) => Ok(events),
            Err(e) => Err(crate::report::error_line(&e)),
        };
        out.write_all(describe(resource, object, events, now).as_bytes())?;
    }
    Ok(Outcome::from(&failures))
}

/// The events whose `involvedObject` is `object`, oldest first. Listed and filtered here, as
/// the server need not support field selectors on events.
async fn events_of(
    session: &Session,
    resource: &ApiResource,
    object: &Value,
) -> anyhow::Result<Vec<Value>> {
    let metadata = &object["metadata"];
    let namespace = metadata["namespace"]
        .as_str()
        .filter(|_| resource.namespaced);
    let path = match namespace {
        Some(ns) => format!("/api/v1/namespaces/{ns}/events"),
        None => "/api/v1/events".to_owned(),
    };
    let list = session.client.get(&path, &[]).await?;
    let mut events: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| is_about(e, resource, object))
        .cloned()
        .collect();
    events.sort_by_key(|e| event_time(e).map(str::to_owned));
    Ok(events)
}

/// Whether `event` is about `object`.
fn is_about(event: &Value, resource: &ApiResource, object: &Value) -> bool {
    let involved = &event["involvedObject"];
    let metadata = &object["metadata"];
    if involved["name"] != metadata["name"]
        || involved["kind"].as_str() != Some(resource.kind.as_str())
    {
        return false;
    }
    if resource.namespaced
        && involved["namespace"].is_string()
        && involved["namespace"] != metadata["namespace"]
    {
        return false;
    }
    // A uid tells apart an object from an earlier one of the same name.
    match (involved["uid"].as_str(), metadata["uid"].as_str()) {
        (Some(a), Some(b)) if !a.is_empty() => a == b,
        _ => true,
    }
}

fn event_time(event: &Value) -> Option<&str> {
    ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| event[*f].as_str())
        .or_else(|| event["metadata"]["creationTimestamp"].as_str())
}

/// The description of `object`; `events` failed to be listed if it is an error.
pub fn describe(
    resource: &ApiResource,
    object: &Value,
    events: Result<Vec<Value>, String>,
    now: DateTime<Utc>,
) -> String {
    let metadata = &object["metadata"];
    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let label = format!("{label}:");
        text.push_str(&format!("{label:<LABEL_WIDTH$}{value}\n"));
    };
    line("Name", metadata["name"].as_str().unwrap_or_default());
    if resource.namespaced {
        line(
            "Namespace",
            metadata["namespace"].as_str().unwrap_or_default(),
        );
    }
    let labels = pairs(&metadata["labels"], "=", &[]);
    line("Labels", &multiline(&labels));
    let annotations = pairs(&metadata["annotations"], ": ", &[LAST_APPLIED]);
    line("Annotations", &multiline(&annotations));
    line(
        "CreationTimestamp",
        &metadata["creationTimestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(
                || "<unknown>".to_owned(),
                |t| t.format("%a, %d %b %Y %H:%M:%S %z").to_string(),
            ),
    );
    if let Some(deleted) = metadata["deletionTimestamp"].as_str() {
        line("DeletionTimestamp", deleted);
    }
    if let Some(owner) = metadata["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true)
    {
        let owner = format!(
            "{}/{}",
            owner["kind"].as_str().unwrap_or_default(),
            owner["name"].as_str().unwrap_or_default()
        );
        line("Controlled By", &owner);
    }
    let fields = object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
    // Spec first and status last, as a person reads them.
    let mut fields: Vec<_> = fields.collect();
    fields.sort_by_key(|(k, _)| match k.as_str() {
        "spec" => 0,
        "status" => 2,
        _ => 1,
    });
    for (field, value) in fields {
        let label = capitalized(field);
        let value = if resource.kind == "Secret" && matches!(field.as_str(), "data" | "stringData")
        {
            secret_sizes(value, field == "data")
        } else {
            without_nulls(value)
        };
        text.push_str(&render_field(&label, &value));
    }
    match events {
        Ok(events) if events.is_empty() => text.push_str("Events:             <none>\n"),
        Ok(events) => {
            text.push_str("Events:\n");
            text.push_str(&indent(&events_table(&events, now)));
        }
        Err(why) => text.push_str(&format!("Events:             <unavailable: {why}>\n")),
    }
    text
}

/// `key=value` (or `key: value`) lines of a string map, sorted, leaving out `skip`.
fn pairs(map: &Value, separator: &str, skip: &[&str]) -> Vec<String> {
    map.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| {
            format!(
                "{k}{separator}{}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect()
}

fn multiline(lines: &[String]) -> String {
    if lines.is_empty() {
        return "<none>".to_owned();
    }
    lines.join(&format!("\n{:LABEL_WIDTH$}", ""))
}

fn capitalized(field: &str) -> String {
    let mut chars = field.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A field: scalars on the label's line, the rest as YAML indented below it.
fn render_field(label: &str, value: &Value) -> String {
    match value {
        Value::Object(m) if m.is_empty() => {
            format!("{:<LABEL_WIDTH$}<none>\n", format!("{label}:"))
        }
        Value::Array(a) if a.is_empty() => format!("{:<LABEL_WIDTH$}<none>\n", format!("{label}:")),
        Value::Object(_) | Value::Array(_) => {
            let yaml = serde_yaml::to_string(value).unwrap_or_else(|e| format!("<{e}>\n"));
            format!("{label}:\n{}", indent(&yaml))
        }
        Value::String(s) => format!("{:<LABEL_WIDTH$}{s}\n", format!("{label}:")),
        other => format!("{:<LABEL_WIDTH$}{other}\n", format!("{label}:")),
    }
}

/// `value` without the fields set to `null`, which say nothing to a reader.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// A secret's values replaced by their sizes: a description is read over shoulders.
fn secret_sizes(data: &Value, base64: bool) -> Value {
    let sizes = data.as_object().into_iter().flatten().map(|(k, v)| {
        let text = v.as_str().unwrap_or_default();
        let bytes = if base64 {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_or(text.len(), |d| d.len())
        } else {
            text.len()
        };
        (k.clone(), Value::String(format!("{bytes} bytes")))
    });
    Value::Object(sizes.collect())
}

fn events_table(events: &[Value], now: DateTime<Utc>) -> String {
    let headers = ["Type", "Reason", "Age", "From", "Message"];
    let mut table = Table {
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
        rows: vec![headers.iter().map(|h| "-".repeat(h.len())).collect()],
    };
    for event in events {
        let last = age::since(event_time(event), now);
        let count = event["count"].as_i64().unwrap_or(1);
        let age = match event["firstTimestamp"].as_str() {
            Some(first) if count > 1 => {
                format!("{last} (x{count} over {})", age::since(Some(first), now))
            }
            _ => last,
        };
        let from = event["source"]["component"]
            .as_str()
            .or_else(|| event["reportingComponent"].as_str())
            .unwrap_or_default();
        let message = event["message"].as_str().unwrap_or_default().trim();
        table.rows.push(vec![
            event["type"].as_str().unwrap_or_default().to_owned(),
            event["reason"].as_str().unwrap_or_default().to_owned(),
            age,
            from.to_owned(),
            message.split_whitespace().collect::<Vec<_>>().join(" "),
        ]);
    }
    let mut out = Vec::new();
    table
        .write(&mut out, false)
        .expect("writing to memory cannot fail");
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::discovery::{Discovery, tests::canned};

    #[test]
    fn metadata_spec_status_and_events_are_shown() {
        let d = canned();
        let deploy = d.resolve("deploy").unwrap();
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                         "creationTimestamp": "2025-01-01T00:00:00Z",
                         "labels": {"app": "web", "tier": "front"},
                         "annotations": {LAST_APPLIED: "{}", "note": "hi"}},
            "spec": {"replicas": 2, "paused": null, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"readyReplicas": 2},
        });
        let now = DateTime::parse_from_rfc3339("2025-01-01T00:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let event = json!({"type": "Normal", "reason": "ScalingReplicaSet", "message": "Scaled up",
            "source": {"component": "deployment-controller"}, "count": 1,
            "lastTimestamp": "2025-01-01T00:04:50Z",
            "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "default", "uid": "u1"}});
        assert!(is_about(&event, deploy, &object));
        let text = describe(deploy, &object, Ok(vec![event]), now);
        let expected_start = "Name:               web\n\
                              Namespace:          default\n\
                              Labels:             app=web\n\
                              \x20                   tier=front\n\
                              Annotations:        note: hi\n\
                              CreationTimestamp:  Wed, 01 Jan 2025 00:00:00 +0000\n\
                              Spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web\n\
                              Status:\n  readyReplicas: 2\n\
                              Events:\n  Type     Reason              Age   From                    Message\n";
        assert!(text.starts_with(expected_start), "{text}");
        assert!(
            text.contains(
                "  Normal   ScalingReplicaSet   10s   deployment-controller   Scaled up\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn events_about_others_are_left_out() {
        let d = canned();
        let deploy = d.resolve("deploy").unwrap();
        let object = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u2"}});
        let other_uid =
            json!({"involvedObject": {"kind": "Deployment", "name": "web", "uid": "u1"}});
        let other_kind = json!({"involvedObject": {"kind": "Service", "name": "web"}});
        assert!(!is_about(&other_uid, deploy, &object));
        assert!(!is_about(&other_kind, deploy, &object));
        let text = describe(deploy, &object, Ok(vec![]), Utc::now());
        assert!(text.contains("Labels:             <none>\n"), "{text}");
        assert!(text.ends_with("Events:             <none>\n"), "{text}");
    }

    #[test]
    fn secret_values_are_not_shown() {
        let d = Discovery::from_lists(&[(
            "",
            "v1",
            json!({"resources": [{"name": "secrets", "namespaced": true, "kind": "Secret"}]}),
        )]);
        let secret = d.resolve("secret").unwrap();
        let object = json!({"metadata": {"name": "s", "namespace": "default"}, "type": "Opaque",
                            "data": {"password": "aHVudGVyMg=="}});
        let text = describe(secret, &object, Ok(vec![]), Utc::now());
        assert!(text.contains("Type:               Opaque\n"), "{text}");
        assert!(text.contains("password: 7 bytes"), "{text}");
        assert!(!text.contains("aHVudGVyMg"), "{text}");
    }
}
