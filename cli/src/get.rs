//! `apiary get`: objects as the server's tables (or YAML, JSON, names), once or as they change.

use std::io::Write;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    Outcome, Session, age,
    client::{self, Client},
    discovery::{ApiResource, Target},
    report::Failures,
    table::{self, Table},
};

/// The output formats of `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The table with its extra columns.
    Wide,
    Yaml,
    Json,
    /// `kind.group/name` per object.
    Name,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE[,TYPE…] [NAME…]` or `TYPE/NAME…`.
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub args: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Field selector, e.g. `metadata.name=web`.
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,
    /// Objects of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// After the list, print changes as they happen.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Leave out the table's headers.
    #[arg(long)]
    pub no_headers: bool,
}

impl Args {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(selector) = &self.selector {
            query.push(("labelSelector", selector.clone()));
        }
        if let Some(selector) = &self.field_selector {
            query.push(("fieldSelector", selector.clone()));
        }
        query
    }
}

fn borrowed<'a>(query: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    query.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub async fn run(session: &Session, args: &Args, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let discovery = session.discover().await?;
    let targets = discovery.targets(&args.args)?;
    let namespace = (!args.all_namespaces).then_some(session.namespace.as_str());
    if args.all_namespaces && targets.iter().any(|t| !t.names.is_empty()) {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    if args.watch {
        let [target] = targets.as_slice() else {
            bail!("watch is only supported on a single resource type");
        };
        return watch(&session.client, target, namespace, args, out).await;
    }
    let mut failures = Failures::default();
    match args.output {
        None | Some(Output::Wide) => {
            print_tables(
                &session.client,
                &targets,
                namespace,
                args,
                out,
                &mut failures,
            )
            .await?;
        }
        Some(format) => {
            let mut objects = Vec::new();
            for target in &targets {
                objects.extend(
                    fetch_objects(&session.client, target, namespace, args, &mut failures).await?,
                );
            }
            let single = targets.len() == 1 && targets[0].names.len() == 1;
            print_objects(out, format, objects, single)?;
        }
    }
    Ok(Outcome::from(&failures))
}

/// Prints each target's table, a blank line between two.
async fn print_tables(
    client: &Client,
    targets: &[Target<'_>],
    namespace: Option<&str>,
    args: &Args,
    out: &mut impl Write,
    failures: &mut Failures,
) -> anyhow::Result<()> {
    let options = table::Options {
        wide: args.output == Some(Output::Wide),
        namespace_column: namespace.is_none() && targets.iter().any(|t| t.resource.namespaced),
    };
    let mut printed = false;
    let query = args.query();
    for target in targets {
        let resource = target.resource;
        let prefix = (targets.len() > 1).then(|| resource.qualified_kind());
        let server_table = if target.names.is_empty() {
            let path = resource.path(namespace, None);
            as_table(client.get_table(&path, &borrowed(&query)).await?)
        } else {
            let mut tables = Vec::new();
            for name in &target.names {
                let path = resource.path(Some(namespace.unwrap_or("default")), Some(name));
                match client.get_table(&path, &[]).await {
                    Ok(t) => tables.push(as_table(t)),
                    Err(e) => failures.report(e.into()),
                }
            }
            join_tables(tables)
        };
        let table = Table::from_server(&server_table, &options, prefix.as_deref());
        if table.rows.is_empty() {
            continue;
        }
        if printed {
            writeln!(out)?;
        }
        table.write(out, args.no_headers)?;
        printed = true;
    }
    let named = targets.iter().any(|t| !t.names.is_empty());
    if !printed && !named {
        let namespaced = targets.iter().any(|t| t.resource.namespaced);
        match namespace {
            Some(ns) if namespaced => eprintln!("No resources found in {ns} namespace."),
            _ => eprintln!("No resources found"),
        }
    }
    Ok(())
}

/// The rows of several one-object tables as one table.
fn join_tables(tables: Vec<Value>) -> Value {
    let mut tables = tables.into_iter();
    let Some(mut joined) = tables.next() else {
        return json!({"kind": "Table", "columnDefinitions": [], "rows": []});
    };
    for table in tables {
        if let (Some(rows), Some(more)) = (joined["rows"].as_array_mut(), table["rows"].as_array())
        {
            rows.extend(more.iter().cloned());
        }
    }
    joined
}

/// The server's answer as a `Table`: as it is if it is one, else a NAME/AGE table made here
/// from the object or list.
fn as_table(answer: Value) -> Value {
    if answer["kind"] == "Table" {
        return answer;
    }
    let objects = match answer["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![answer.clone()],
    };
    let now = chrono::Utc::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": [
                    o["metadata"]["name"],
                    age::since(o["metadata"]["creationTimestamp"].as_str(), now),
                ],
                "object": {"metadata": o["metadata"]},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "metadata": answer["metadata"],
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "priority": 0},
        ],
        "rows": rows,
    })
}

/// The objects of `target`, each with its `apiVersion` and `kind`.
async fn fetch_objects(
    client: &Client,
    target: &Target<'_>,
    namespace: Option<&str>,
    args: &Args,
    failures: &mut Failures,
) -> anyhow::Result<Vec<Value>> {
    let resource = target.resource;
    let mut objects = Vec::new();
    if target.names.is_empty() {
        let query = args.query();
        let list = client
            .get(&resource.path(namespace, None), &borrowed(&query))
            .await?;
        objects.extend(list["items"].as_array().into_iter().flatten().cloned());
    } else {
        for name in &target.names {
            let path = resource.path(Some(namespace.unwrap_or("default")), Some(name));
            match client.get(&path, &[]).await {
                Ok(object) => objects.push(object),
                Err(e) => failures.report(e.into()),
            }
        }
    }
    for object in &mut objects {
        typed(object, resource);
    }
    Ok(objects)
}

/// Fills in `apiVersion` and `kind`, which list items leave out.
fn typed(object: &mut Value, resource: &ApiResource) {
    if let Some(map) = object.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(resource.api_version()));
        map.entry("kind")
            .or_insert_with(|| Value::String(resource.kind.clone()));
    }
}

/// `kind.group/name` of an object.
fn object_name(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if group.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}.{group}/{name}")
    }
}

/// Prints `objects` as `format`: the object alone if one was asked for by name, else a `List`.
pub fn print_objects(
    out: &mut impl Write,
    format: Output,
    objects: Vec<Value>,
    single: bool,
) -> anyhow::Result<()> {
    if format == Output::Name {
        for object in &objects {
            writeln!(out, "{}", object_name(object))?;
        }
        return Ok(());
    }
    let value = match (single, objects.len()) {
        (true, 1) => objects.into_iter().next().expect("one object"),
        (true, 0) => return Ok(()),
        _ => json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": objects,
            "metadata": {"resourceVersion": ""},
        }),
    };
    print_value(out, format, &value)
}

fn print_value(out: &mut impl Write, format: Output, value: &Value) -> anyhow::Result<()> {
    match format {
        Output::Yaml => {
            let text = serde_yaml::to_string(value).context("rendering YAML")?;
            out.write_all(text.as_bytes())?;
        }
        _ => {
            let mut text = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut text, formatter);
            serde::Serialize::serialize(value, &mut serializer).context("rendering JSON")?;
            text.push(b'\n');
            out.write_all(&text)?;
        }
    }
    Ok(())
}

/// `get -w`: the current objects, then each change, until the server ends the watch.
async fn watch(
    client: &Client,
    target: &Target<'_>,
    namespace: Option<&str>,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let resource = target.resource;
    let mut query = args.query();
    match target.names.as_slice() {
        [] => {}
        [name] => {
            let by_name = format!("metadata.name={name}");
            match query.iter_mut().find(|(k, _)| *k == "fieldSelector") {
                Some((_, selector)) => *selector = format!("{selector},{by_name}"),
                None => query.push(("fieldSelector", by_name)),
            }
        }
        _ => bail!("watch is only supported on a single object or all objects of a type"),
    }
    let path = resource.path(namespace, None);
    let tabular = matches!(args.output, None | Some(Output::Wide));
    let options = table::Options {
        wide: args.output == Some(Output::Wide),
        namespace_column: namespace.is_none() && resource.namespaced,
    };
    let list = if tabular {
        client.get_table(&path, &borrowed(&query)).await?
    } else {
        client.get(&path, &borrowed(&query)).await?
    };
    let revision = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut widths = None;
    if tabular {
        let table = Table::from_server(&as_table(list), &options, None);
        if !table.rows.is_empty() {
            widths = Some(table.write(out, args.no_headers)?);
        }
    } else if let Some(format) = args.output {
        for mut object in list["items"].as_array().cloned().unwrap_or_default() {
            typed(&mut object, resource);
            print_watched(out, format, &object)?;
        }
    }
    out.flush()?;
    let mut watch_query = query.clone();
    if !revision.is_empty() {
        watch_query.push(("resourceVersion", revision));
    }
    let mut events = client
        .watch(&path, &borrowed(&watch_query), tabular)
        .await?;
    while let Some(event) = events.next().await.map_err(watch_error)? {
        if event.kind == "BOOKMARK" {
            continue;
        }
        if tabular {
            let table = Table::from_server(&as_table(event.object), &options, None);
            let widths = match &mut widths {
                Some(widths) => widths,
                None => {
                    let w = table.widths(!args.no_headers);
                    if !args.no_headers {
                        table::write_row(out, &table.headers, &w)?;
                    }
                    widths.insert(w)
                }
            };
            for row in &table.rows {
                table::write_row(out, row, widths)?;
            }
        } else if let Some(format) = args.output {
            let mut object = event.object;
            typed(&mut object, resource);
            print_watched(out, format, &object)?;
        }
        out.flush()?;
    }
    Ok(Outcome::Success)
}

fn watch_error(e: client::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("watching")
}

/// One object of a watch in a non-table format: YAML documents separated by `---`.
fn print_watched(out: &mut impl Write, format: Output, object: &Value) -> anyhow::Result<()> {
    if format == Output::Yaml {
        writeln!(out, "---")?;
    }
    if format == Output::Name {
        writeln!(out, "{}", object_name(object))?;
        return Ok(());
    }
    print_value(out, format, object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_print_as_a_list_unless_one_was_named() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let mut out = Vec::new();
        print_objects(&mut out, Output::Json, vec![cm.clone()], true).unwrap();
        let printed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(printed, cm);
        assert!(
            String::from_utf8(out).unwrap().contains("\n    \"kind\""),
            "4-space indent"
        );

        let mut out = Vec::new();
        print_objects(&mut out, Output::Yaml, vec![cm.clone()], false).unwrap();
        let printed: Value = serde_yaml::from_slice(&out).unwrap();
        assert_eq!(printed["kind"], "List");
        assert_eq!(printed["items"][0], cm);
    }

    #[test]
    fn names_carry_the_group() {
        let mut out = Vec::new();
        let objects = vec![
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}),
        ];
        print_objects(&mut out, Output::Name, objects, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "deployment.apps/web\nservice/web\n"
        );
    }

    #[test]
    fn plain_answers_become_name_and_age_tables() {
        let list = json!({"kind": "ConfigMapList", "metadata": {"resourceVersion": "3"}, "items": [
            {"metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z"}}]});
        let table = as_table(list);
        assert_eq!(table["rows"][0]["cells"][0], "a");
        let printed = Table::from_server(&table, &table::Options::default(), None);
        assert_eq!(printed.headers, ["NAME", "AGE"]);
    }
}
