//! `cargo xtask gen-protobuf`: writes `api/src/protobuf/table.rs`, the schema of every Kubernetes
//! protobuf message the API server reads and writes.
//!
//! Two published crates hold the facts, neither complete alone: k8s-pb's prost structs give each
//! message's field numbers and types (`#[prost(string, optional, tag = "1")]`) but only
//! snake_case names (`pod_ip`), and k8s-openapi's serde impls give the JSON names (`"podIP" =>
//! Field::Key_pod_ip`). Both mirror Kubernetes' package layout, so a message and its JSON type
//! share a module path and a name; within one message, names compared without case or
//! underscores match one to one. `cargo metadata` locates the pinned versions' sources
//! (optional dependencies of xtask, never compiled), so the table is reproducible.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::shell;

/// Where the table goes, relative to the workspace.
const OUTPUT: &str = "api/src/protobuf/table.rs";

/// The group versions whose messages are in the table: those Apiary serves, plus
/// `autoscaling/v1` (Scale as well as v1 HorizontalPodAutoscalers) and `policy/v1` (Eviction). Everything they reference comes too.
const GROUP_VERSIONS: &[&str] = &[
    "api/core/v1",
    "api/admissionregistration/v1",
    "api/apps/v1",
    "api/authentication/v1",
    "api/authorization/v1",
    "api/autoscaling/v1",
    "api/autoscaling/v2",
    "api/batch/v1",
    "api/certificates/v1",
    "api/coordination/v1",
    "api/discovery/v1",
    "api/networking/v1",
    "api/storage/v1",
    "api/policy/v1",
    "api/rbac/v1",
    "apimachinery/pkg/apis/meta/v1",
];

/// k8s-openapi's API versions, newest first: a field's JSON name is looked up in the newest
/// that has its type, then in older ones (for fields a newer release dropped).
const OPENAPI_VERSIONS: &[&str] = &["v1_37", "v1_36", "v1_35", "v1_34", "v1_33"];

/// Messages with their own JSON form (not an object of their fields), by module path and name,
/// and the `Kind` variant the table gives a field of that type.
const SPECIAL: &[(&str, &str)] = &[
    ("apimachinery/pkg/apis/meta/v1::Time", "Time"),
    ("apimachinery/pkg/apis/meta/v1::MicroTime", "MicroTime"),
    ("apimachinery/pkg/apis/meta/v1::Duration", "Duration"),
    ("apimachinery/pkg/apis/meta/v1::FieldsV1", "FieldsV1"),
    ("apimachinery/pkg/api/resource::Quantity", "Quantity"),
    ("apimachinery/pkg/util/intstr::IntOrString", "IntOrString"),
    ("apimachinery/pkg/runtime::RawExtension", "RawExtension"),
    // Go's `type ExtraValue []string`: a message of one `repeated string items`, a JSON array.
    ("api/authentication/v1::ExtraValue", "StringList"),
    ("api/authorization/v1::ExtraValue", "StringList"),
    ("api/certificates/v1::ExtraValue", "StringList"),
    ("apimachinery/pkg/apis/meta/v1::Verbs", "StringList"),
];

/// One field of a prost struct.
#[derive(Debug)]
struct ProstField {
    rust_name: String,
    number: u32,
    label: &'static str,
    kind: String,
}

#[derive(Debug, Default)]
struct Module {
    messages: BTreeMap<String, Vec<ProstField>>,
    api_version: Option<String>,
}

/// Writes the table, or with `check` fails if the checked-in one differs.
pub fn generate(check: bool) -> anyhow::Result<()> {
    let (pb, openapi) = sources()?;
    let modules = read_prost(&pb.join("src"))?;
    let json_names = read_openapi(&openapi.join("src"))?;
    let table = render(&modules, &json_names)?;
    let path = shell::workspace_root().join(OUTPUT);
    if check {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != table {
            bail!("{OUTPUT} is out of date: run `cargo xtask gen-protobuf`");
        }
        return Ok(());
    }
    std::fs::write(&path, table).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {OUTPUT}");
    Ok(())
}

/// The source directories of k8s-pb and k8s-openapi, as resolved in the lockfile.
fn sources() -> anyhow::Result<(PathBuf, PathBuf)> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "xtask/protobuf-sources",
        ])
        .current_dir(shell::workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    // The workspace may hold other releases of these crates (the API server's k8s-openapi):
    // the generator reads the ones xtask pins.
    let dir = |name: &str, version: &str| -> anyhow::Result<PathBuf> {
        let manifest = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name && p["version"] == version)
            .and_then(|p| p["manifest_path"].as_str())
            .with_context(|| format!("{name} is not in cargo metadata"))?;
        Ok(Path::new(manifest)
            .parent()
            .context("manifest without a directory")?
            .to_owned())
    };
    Ok((dir("k8s-pb", "0.9.0")?, dir("k8s-openapi", "0.29.0")?))
}

/// Every `mod.rs` under k8s-pb's `src`, by module path (`api/core/v1`).
fn read_prost(src: &Path) -> anyhow::Result<BTreeMap<String, Module>> {
    let mut modules = BTreeMap::new();
    for file in rust_files(src)? {
        if file.file_name().is_none_or(|n| n != "mod.rs") {
            continue;
        }
        let module = file
            .parent()
            .and_then(|d| d.strip_prefix(src).ok())
            .context("module outside src")?
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file)?;
        modules.insert(module.clone(), parse_prost(&module, &text)?);
    }
    Ok(modules)
}

fn parse_prost(module: &str, text: &str) -> anyhow::Result<Module> {
    let mut parsed = Module::default();
    let mut lines = text.lines().peekable();
    let mut current: Option<(String, Vec<ProstField>)> = None;
    let mut in_resource = false;
    while let Some(line) = lines.next() {
        if let Some(name) = line
            .strip_prefix("pub struct ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some((name.to_owned(), Vec::new()));
        } else if line == "}" {
            if let Some((name, fields)) = current.take() {
                parsed.messages.insert(name, fields);
            }
            in_resource = false;
        } else if line.starts_with("impl crate::Resource for ") {
            in_resource = true;
        } else if in_resource
            && let Some(v) = line
                .trim()
                .strip_prefix("const API_VERSION: &'static str = \"")
        {
            parsed.api_version = Some(v.trim_end_matches("\";").to_owned());
        } else if let Some(attrs) = line
            .trim()
            .strip_prefix("#[prost(")
            .and_then(|l| l.strip_suffix(")]"))
            && let Some((_, fields)) = current.as_mut()
        {
            // The field's declaration may wrap over several lines.
            let mut decl = String::new();
            for next in lines.by_ref() {
                decl.push_str(next.trim());
                if decl.ends_with(',') && decl.matches('<').count() == decl.matches('>').count() {
                    break;
                }
            }
            fields.push(
                parse_field(module, attrs, &decl)
                    .with_context(|| format!("{module}: field {decl}"))?,
            );
        }
    }
    Ok(parsed)
}

fn parse_field(module: &str, attrs: &str, decl: &str) -> anyhow::Result<ProstField> {
    let (name, ty) = decl
        .strip_prefix("pub ")
        .and_then(|d| d.strip_suffix(','))
        .and_then(|d| d.split_once(':'))
        .context("not a field declaration")?;
    // rustfmt leaves a trailing comma in a wrapped type's argument list.
    let ty = ty.trim().replace(",>", ">");
    let ty = ty.as_str();
    let number = attrs
        .split("tag = \"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .context("no tag")?
        .parse()?;
    let first = attrs.split(',').next().unwrap_or_default().trim();
    let (label, scalar) = if let Some(map) = attrs.strip_prefix("btree_map = \"") {
        // `btree_map = "string, message"`: keys are always strings.
        let value = map.split('"').next().and_then(|m| m.split(", ").nth(1));
        ("Map", value.context("map without a value type")?)
    } else if attrs.contains("repeated") {
        ("Repeated", first)
    } else {
        ("Optional", first)
    };
    let kind = match scalar {
        "string" => "String".to_owned(),
        "bool" => "Bool".to_owned(),
        "int32" => "Int32".to_owned(),
        "int64" => "Int64".to_owned(),
        "double" => "Double".to_owned(),
        "bytes" | "bytes = \"vec\"" => "Bytes".to_owned(),
        "message" => format!("message:{}", message_path(module, ty)?),
        other => bail!("unsupported protobuf type {other}"),
    };
    Ok(ProstField {
        rust_name: name.trim_start_matches("r#").to_owned(),
        number,
        label,
        kind,
    })
}

/// `api/core/v1::Container` for a field type such as `::prost::alloc::vec::Vec<Container>` or
/// `::core::option::Option<super::super::super::apimachinery::pkg::apis::meta::v1::Time>`.
fn message_path(module: &str, ty: &str) -> anyhow::Result<String> {
    let mut inner = ty;
    // A map's value is its last type argument.
    if let Some((_, value)) = inner.rsplit_once(',') {
        inner = value;
    }
    for wrapper in [
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
    ] {
        inner = inner.trim_start_matches(wrapper);
    }
    let inner = inner.trim().trim_end_matches('>');
    let mut path: Vec<&str> = module.split('/').collect();
    let mut segments: Vec<&str> = inner.split("::").collect();
    let name = segments.pop().context("empty type")?;
    for segment in segments {
        if segment == "super" {
            path.pop().context("super above src")?;
        } else {
            path.push(segment);
        }
    }
    Ok(format!("{}::{name}", path.join("/")))
}

/// JSON names by module path and type name, per k8s-openapi version: `(json, snake)` pairs.
type JsonNames = HashMap<String, Vec<(String, String)>>;

fn read_openapi(src: &Path) -> anyhow::Result<Vec<JsonNames>> {
    OPENAPI_VERSIONS
        .iter()
        .map(|version| {
            let root = src.join(version);
            let mut names = JsonNames::new();
            for file in rust_files(&root)? {
                let module = file
                    .parent()
                    .and_then(|d| d.strip_prefix(&root).ok())
                    .context("outside version")?
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&file)?;
                let Some(name) = text.lines().find_map(|l| {
                    l.strip_prefix("pub struct ")
                        .map(|s| s.split([' ', '{', '(', ';']).next().unwrap_or(s))
                }) else {
                    continue;
                };
                let keys = text
                    .lines()
                    .filter_map(|l| {
                        let (json, key) = l.trim().split_once("\" => Field::Key_")?;
                        Some((
                            json.strip_prefix('"')?.to_owned(),
                            key.trim_end_matches(',').to_owned(),
                        ))
                    })
                    .collect::<BTreeSet<_>>();
                // Type names are compared without case: prost writes `AwsElasticBlockStore…`
                // for Go's `AWSElasticBlockStore…`.
                names.insert(
                    format!("{module}::{}", name.to_ascii_lowercase()),
                    keys.into_iter().collect(),
                );
            }
            Ok(names)
        })
        .collect()
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn normalized(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The JSON name of `field` of the message at `path`; `None` if the message has a JSON type
/// without that field (an inlined struct).
fn json_name(json_names: &[JsonNames], path: &str, field: &str) -> anyhow::Result<Option<String>> {
    let mut has_type = false;
    for names in json_names {
        let Some(keys) = names.get(&path.to_ascii_lowercase()) else {
            continue;
        };
        has_type = true;
        let found = keys
            .iter()
            .find(|(_, key)| key.trim_end_matches('_') == field)
            .or_else(|| {
                keys.iter()
                    .find(|(json, _)| normalized(json) == normalized(field))
            });
        if let Some((json, _)) = found {
            return Ok(Some(json.clone()));
        }
    }
    if has_type {
        return Ok(None);
    }
    // A message with no JSON type of its own (EphemeralContainerCommon, inlined into
    // EphemeralContainer): the one JSON spelling its module gives that field name elsewhere.
    let module = path.split("::").next().unwrap_or_default();
    let spellings: BTreeSet<&str> = json_names
        .iter()
        .flat_map(|names| names.iter())
        .filter(|(type_path, _)| type_path.split("::").next() == Some(module))
        .flat_map(|(_, keys)| keys.iter())
        .filter(|(_, key)| key.trim_end_matches('_') == field)
        .map(|(json, _)| json.as_str())
        .collect();
    match spellings.into_iter().collect::<Vec<_>>().as_slice() {
        [json] => Ok(Some((*json).to_owned())),
        // A one-word name (a list's `items`, a watch event's `object`) is spelled the same.
        [] if field.bytes().all(|b| b.is_ascii_lowercase()) => Ok(Some(field.to_owned())),
        _ => bail!("no JSON name for {path}.{field} in k8s-openapi"),
    }
}

/// A message's name in the table: its protobuf full name (`k8s.io.api.core.v1.Pod`).
fn proto_name(path: &str) -> String {
    let (module, name) = path.split_once("::").unwrap_or(("", path));
    format!("k8s.io.{}.{name}", module.replace('/', "."))
}

fn render(modules: &BTreeMap<String, Module>, json_names: &[JsonNames]) -> anyhow::Result<String> {
    let special: HashMap<&str, &str> = SPECIAL.iter().copied().collect();
    // The messages reachable from the served group versions, by protobuf name (the table's
    // order, so that lookups can binary search).
    let mut included = BTreeMap::<String, String>::new();
    let mut pending: Vec<String> = GROUP_VERSIONS
        .iter()
        .flat_map(|gv| {
            modules
                .get(*gv)
                .into_iter()
                .flat_map(move |m| m.messages.keys().map(move |n| format!("{gv}::{n}")))
        })
        // Messages without a JSON type (protobuf-only internals such as meta/v1 `Fields`) are
        // never a body; lists and watch events are, though k8s-openapi has only generic ones.
        .filter(|path| {
            path.ends_with("List")
                || path.ends_with("::WatchEvent")
                || json_names
                    .iter()
                    .any(|names| names.contains_key(&path.to_ascii_lowercase()))
        })
        .collect();
    while let Some(path) = pending.pop() {
        if special.contains_key(path.as_str()) || included.contains_key(&proto_name(&path)) {
            continue;
        }
        let (module, name) = path.split_once("::").context("path")?;
        let fields = modules
            .get(module)
            .and_then(|m| m.messages.get(name))
            .with_context(|| format!("{path} is not in k8s-pb"))?;
        for field in fields {
            if let Some(target) = field.kind.strip_prefix("message:") {
                pending.push(target.to_owned());
            }
        }
        included.insert(proto_name(&path), path);
    }
    let index: HashMap<&str, usize> = included
        .values()
        .enumerate()
        .map(|(i, path)| (path.as_str(), i))
        .collect();

    let mut out = String::new();
    writeln!(
        out,
        "// @generated by `cargo xtask gen-protobuf` from k8s-pb's and k8s-openapi's sources: do not edit.\n\
         // {} messages.\n\n\
         use super::schema::{{Field, Kind::*, Label::*, Message}};\n",
        included.len()
    )?;
    writeln!(
        out,
        "/// Each API version's protobuf package, for a kind's message.\n\
         pub(super) static PACKAGES: &[(&str, &str)] = &["
    )?;
    for gv in GROUP_VERSIONS {
        let api_version = match modules.get(*gv).and_then(|m| m.api_version.clone()) {
            Some(v) => v,
            None if gv.ends_with("meta/v1") => "meta.k8s.io/v1".to_owned(),
            None => bail!("{gv} has no resource to name its API version"),
        };
        writeln!(
            out,
            "    ({api_version:?}, {:?}),",
            proto_name(&format!("{gv}::"))
        )?;
    }
    writeln!(
        out,
        "];\n\n/// Every message, sorted by name; fields sorted by number.\n\
         pub(super) static MESSAGES: &[Message] = &["
    )?;
    for (i, (name, path)) in included.iter().enumerate() {
        let (module, short) = path.split_once("::").context("path")?;
        let mut fields: Vec<&ProstField> = modules[module].messages[short].iter().collect();
        fields.sort_by_key(|f| f.number);
        writeln!(
            out,
            "    // {i}\n    Message {{\n        name: {name:?},\n        fields: &["
        )?;
        for field in fields {
            let json = match json_name(json_names, path, &field.rust_name)? {
                Some(json) => json,
                // Go's `json:",inline"` embedding (ConfigMapEnvSource's LocalObjectReference):
                // a message field in protobuf, its fields in the parent's JSON.
                None if field.kind.starts_with("message:") && field.label == "Optional" => {
                    String::new()
                }
                None => bail!("no JSON name for {path}.{} in k8s-openapi", field.rust_name),
            };
            let label = if json.is_empty() {
                "Inline"
            } else {
                field.label
            };
            let kind = match field.kind.strip_prefix("message:") {
                Some(target) => match special.get(target) {
                    Some(special) => (*special).to_owned(),
                    None => format!("Message({})", index[target]),
                },
                None => field.kind.clone(),
            };
            writeln!(
                out,
                "            Field {{ number: {}, json: {json:?}, label: {}, kind: {kind} }},",
                field.number, label
            )?;
        }
        writeln!(out, "        ],\n    }},")?;
    }
    writeln!(out, "];")?;
    Ok(out)
}
