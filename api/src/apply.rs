//! Server-side apply: who owns which fields of an object (`metadata.managedFields`, in the
//! `FieldsV1` encoding), how an applied configuration merges into the live object, and when it
//! conflicts with another manager — structured-merge-diff's model, over JSON.
//!
//! Lists merge by their type: `map` lists item by item on their keys (`k:{"name":"web"}`),
//! `set` lists by value (`v:"a"`), anything else whole (atomic). Built-in kinds take the list
//! types of the strategic merge table ([`crate::strategic`]); custom kinds those of their schema
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// How a list is merged and owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    Atomic,
    Set,
    /// Items keyed by these fields, each with the value an item that omits it has (its
    /// schema's default).
    Map(Vec<MapKey>),
}

/// One key field of a map list, and its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapKey {
    pub field: String,
    pub default: Option<Value>,
}

impl MapKey {
    fn new(field: &str, default: Option<Value>) -> Self {
        Self {
            field: field.to_owned(),
            default,
        }
    }
}

/// The built-in lists keyed by more than their strategic merge key, as Kubernetes' OpenAPI
/// lists them (`x-kubernetes-list-map-keys`): a port is its number and its protocol (TCP when
/// unset), so DNS's 53/TCP and 53/UDP are two items, not one.
fn built_in_map_keys(field: &str, parent: &str) -> Option<Vec<MapKey>> {
    let tcp = || Some(json!("TCP"));
    Some(match (field, parent) {
        ("ports", "containers" | "initContainers" | "ephemeralContainers") => vec![
            MapKey::new("containerPort", None),
            MapKey::new("protocol", tcp()),
        ],
        ("ports", "spec") => vec![MapKey::new("port", None), MapKey::new("protocol", tcp())],
        ("topologySpreadConstraints", _) => vec![
            MapKey::new("topologyKey", None),
            MapKey::new("whenUnsatisfiable", None),
        ],
        _ => return None,
    })
}

/// Where list types come from, at one place in an object.
#[derive(Clone, Copy, Debug)]
pub enum Shape<'a> {
    /// A built-in kind: the field holding this value and the field holding that one.
    BuiltIn { field: &'a str, parent: &'a str },
    /// A custom kind: this value's schema (`None` where the schema says nothing).
    Schema(Option<&'a Value>),
}

impl<'a> Shape<'a> {
    /// The root of a built-in object.
    pub const BUILT_IN: Shape<'static> = Shape::BuiltIn {
        field: "",
        parent: "",
    };

    fn child(self, name: &'a str) -> Self {
        match self {
            Self::BuiltIn { field, .. } => Self::BuiltIn {
                field: name,
                parent: field,
            },
            Self::Schema(schema) => Self::Schema(schema.and_then(|s| {
                s["properties"]
                    .get(name)
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
            })),
        }
    }

    /// The shape of a list's items: for built-ins the list's field stays the parent of the
    /// items' fields (a container's `ports` are keyed by `containerPort`).
    fn items(self) -> Self {
        match self {
            Self::BuiltIn { .. } => self,
            Self::Schema(schema) => Self::Schema(schema.and_then(|s| s.get("items"))),
        }
    }

    fn list_type(self) -> ListType {
        match self {
            Self::BuiltIn { field, parent } => {
                if let Some(keys) = built_in_map_keys(field, parent) {
                    ListType::Map(keys)
                } else if let Some(key) = crate::strategic::merge_key(field, parent) {
                    ListType::Map(vec![MapKey::new(key, None)])
                } else if crate::strategic::merges_as_set(field) {
                    ListType::Set
                } else {
                    ListType::Atomic
                }
            }
            Self::Schema(schema) => {
                let schema = schema.unwrap_or(&Value::Null);
                match schema["x-kubernetes-list-type"].as_str() {
                    Some("set") => ListType::Set,
                    Some("map") => ListType::Map(
                        schema["x-kubernetes-list-map-keys"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(|k| {
                                let default = schema["items"]["properties"][k].get("default");
                                MapKey::new(k, default.cloned())
                            })
                            .collect(),
                    ),
                    _ => ListType::Atomic,
                }
            }
        }
    }
}

/// A set of fields: a tree of path elements (`f:name`, `k:{…}`, `v:…`); `member` marks the
/// node itself as owned (a leaf, or a list item owned as a whole).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// Top-level fields no manager owns: identity and bookkeeping.
const UNOWNED_TOP: &[&str] = &["apiVersion", "kind", "status"];
/// The metadata fields that are owned like content.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "ownerReferences", "finalizers"];

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// The fields set in `object` (an applied configuration, or an object written), without
    /// identity, `status` and server-set metadata; through the `status` subresource, only
    /// `status`.
    pub fn of_object(object: &Value, shape: Shape<'_>, subresource: Option<&str>) -> Self {
        let mut set = Self::default();
        if subresource == Some("status") {
            if let Some(status) = object.get("status") {
                let status = Self::of_value(status, shape.child("status"));
                if !status.is_empty() {
                    set.children.insert("f:status".to_owned(), status);
                }
            }
            return set;
        }
        let Some(fields) = object.as_object() else {
            return set;
        };
        for (name, value) in fields {
            if UNOWNED_TOP.contains(&name.as_str()) {
                continue;
            }
            let child = if name == "metadata" {
                let mut meta = Self::default();
                for field in OWNED_METADATA {
                    if let Some(v) = value.get(*field) {
                        let s = shape.child("metadata").child(field);
                        meta.children
                            .insert(format!("f:{field}"), Self::of_value(v, s));
                    }
                }
                if meta.is_empty() {
                    continue;
                }
                meta
            } else {
                Self::of_value(value, shape.child(name))
            };
            set.children.insert(format!("f:{name}"), child);
        }
        set
    }

    fn of_value(value: &Value, shape: Shape<'_>) -> Self {
        match value {
            Value::Object(fields) if !fields.is_empty() => {
                let mut set = Self::default();
                for (name, v) in fields {
                    set.children
                        .insert(format!("f:{name}"), Self::of_value(v, shape.child(name)));
                }
                set
            }
            Value::Array(items) => match shape.list_type() {
                ListType::Atomic => Self::leaf(),
                ListType::Set => Self {
                    member: false,
                    children: items
                        .iter()
                        .map(|item| (format!("v:{item}"), Self::leaf()))
                        .collect(),
                },
                ListType::Map(keys) => {
                    let mut set = Self::default();
                    for item in items {
                        let mut entry = Self::of_value(item, shape.items());
                        entry.member = true;
                        set.children.insert(item_key(item, &keys), entry);
                    }
                    set
                }
            },
            _ => Self::leaf(),
        }
    }

    fn leaf() -> Self {
        Self {
            member: true,
            children: BTreeMap::new(),
        }
    }

    /// The fields in `self` and not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let mut out = Self {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            let rest = match other.children.get(key) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(key.clone(), rest);
            }
        }
        out
    }

    /// The fields in either.
    pub fn union(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.member |= other.member;
        for (key, child) in &other.children {
            let merged = match out.children.get(key) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(key.clone(), merged);
        }
        out
    }

    /// The fields in both.
    pub fn intersection(&self, other: &Self) -> Self {
        let mut out = Self {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            if let Some(theirs) = other.children.get(key) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(key.clone(), both);
                }
            }
        }
        out
    }

    /// Every owned path, as lists of path elements.
    pub fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect_leaves(&mut Vec::new(), &mut out);
        out
    }

    fn collect_leaves(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (key, child) in &self.children {
            prefix.push(key.clone());
            child.collect_leaves(prefix, out);
            prefix.pop();
        }
    }

    /// The `FieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        let mut out = Map::new();
        if self.member && !self.children.is_empty() {
            out.insert(".".to_owned(), json!({}));
        }
        for (key, child) in &self.children {
            out.insert(key.clone(), child.to_fields_v1());
        }
        Value::Object(out)
    }

    /// Reads the `FieldsV1` JSON form.
    pub fn from_fields_v1(value: &Value) -> Self {
        let Some(fields) = value.as_object() else {
            return Self::default();
        };
        if fields.is_empty() {
            return Self::leaf();
        }
        let mut set = Self::default();
        for (key, child) in fields {
            if key == "." {
                set.member = true;
            } else {
                set.children
                    .insert(key.clone(), Self::from_fields_v1(child));
            }
        }
        set
    }
}

/// The `k:` element of a map-list item: its key fields as a JSON object.
fn item_key(item: &Value, keys: &[MapKey]) -> String {
    let key: Map<String, Value> = keys
        .iter()
        .filter_map(|k| {
            let value = item.get(&k.field).cloned().or_else(|| k.default.clone())?;
            Some((k.field.clone(), value))
        })
        .collect();
    format!("k:{}", Value::Object(key))
}

/// The value at a field path, if the object has it.
pub fn value_at<'v>(object: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut current = object;
    for element in path {
        current = step(current, element)?;
    }
    Some(current)
}

fn step<'v>(value: &'v Value, element: &str) -> Option<&'v Value> {
    if let Some(name) = element.strip_prefix("f:") {
        return value.get(name);
    }
    let items = value.as_array()?;
    if let Some(key) = element.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        return items
            .iter()
            .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    let wanted: Value = serde_json::from_str(element.strip_prefix("v:")?).ok()?;
    items.iter().find(|item| **item == wanted)
}

/// Removes the owned paths of `set` from `object` (fields, map-list items, set values).
pub fn remove(object: &mut Value, set: &FieldSet) {
    for (key, child) in &set.children {
        if let Some(name) = key.strip_prefix("f:") {
            let Some(fields) = object.as_object_mut() else {
                continue;
            };
            if child.member {
                fields.remove(name);
            } else if let Some(value) = fields.get_mut(name) {
                remove(value, child);
                // A map emptied of everything this set removed goes too.
                if value.as_object().is_some_and(Map::is_empty) && !child.children.is_empty() {
                    fields.remove(name);
                }
            }
            continue;
        }
        let Some(items) = object.as_array_mut() else {
            continue;
        };
        let position = items
            .iter()
            .position(|item| step(&Value::Array(vec![item.clone()]), key).is_some());
        if let Some(i) = position {
            if child.member {
                items.remove(i);
            } else {
                remove(&mut items[i], child);
            }
        }
    }
}

/// Merges an applied configuration into `live`: fields set replace, map lists merge item by
/// item, set lists gain the configuration's values, atomic lists are replaced.
pub fn merge(live: &mut Value, config: &Value, shape: Shape<'_>) {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) => {
            for (name, value) in config {
                let child = shape.child(name);
                match live.get_mut(name) {
                    Some(existing) => merge(existing, value, child),
                    None => {
                        live.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(live), Value::Array(config)) => match shape.list_type() {
            ListType::Atomic => *live = config.clone(),
            ListType::Set => {
                for item in config {
                    if !live.contains(item) {
                        live.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                for item in config {
                    let key = item_key(item, &keys);
                    match live.iter_mut().find(|l| item_key(l, &keys) == key) {
                        Some(existing) => merge(existing, item, shape.items()),
                        None => live.push(item.clone()),
                    }
                }
            }
        },
        (live, config) => *live = config.clone(),
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl ManagedEntry {
    pub fn parse(value: &Value) -> Option<Self> {
        Some(Self {
            manager: value["manager"].as_str()?.to_owned(),
            operation: value["operation"].as_str().unwrap_or("Update").to_owned(),
            api_version: value["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: value["time"].as_str().unwrap_or_default().to_owned(),
            subresource: value["subresource"].as_str().map(str::to_owned),
            fields: FieldSet::from_fields_v1(&value["fieldsV1"]),
        })
    }

    pub fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(sub) = &self.subresource {
            entry["subresource"] = json!(sub);
        }
        entry
    }
}

/// The managed fields of an object.
pub fn managed_fields(object: &Value) -> Vec<ManagedEntry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(ManagedEntry::parse)
        .collect()
}

/// Writes `entries` (those still owning something) into `object`'s metadata.
pub fn set_managed_fields(object: &mut Value, entries: &[ManagedEntry]) {
    let kept: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(ManagedEntry::to_json)
        .collect();
    if kept.is_empty() {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
    } else {
        object["metadata"]["managedFields"] = Value::Array(kept);
    }
}

/// A field another manager owns with a different value than the configuration sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    /// `.spec.replicas`, `.spec.containers[name="web"].image`.
    pub field: String,
}

/// Kubernetes' 409 message for `conflicts`.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {:?} using {}: {}",
            only.manager, only.api_version, only.field
        );
    }
    let mut by_manager: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager
            .entry((c.manager.clone(), c.api_version.clone()))
            .or_default()
            .push(&c.field);
    }
    let mut message = format!("Apply failed with {} conflicts:", conflicts.len());
    for ((manager, api_version), fields) in by_manager {
        message.push_str(&format!(" conflicts with {manager:?} using {api_version}:"));
        for field in fields {
            message.push_str(&format!("\n- {field}"));
        }
    }
    message
}

/// A path as Kubernetes prints it in conflicts.
pub fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(name) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = element.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = element.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// Who makes a write, as its `managedFields` entry records it.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// When (RFC 3339).
    pub time: &'a str,
    /// `None`, or `status`.
    pub subresource: Option<&'a str>,
}

/// Applies `config` by `writer` to `live` (an empty object when creating): the object to
/// write, with its managed fields. Fails with the conflicts unless `force`, which takes the
/// fields over.
pub fn apply(
    live: &Value,
    config: &Value,
    writer: &Writer<'_>,
    force: bool,
    shape: Shape<'_>,
) -> Result<Value, Vec<Conflict>> {
    let Writer {
        manager,
        api_version,
        time,
        subresource,
    } = *writer;
    let mut entries = managed_fields(live);
    let owned = FieldSet::of_object(config, shape, subresource);
    let mine = |e: &ManagedEntry| {
        e.manager == manager && e.operation == "Apply" && e.subresource.as_deref() == subresource
    };
    let previous = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    // Conflicts: a field this configuration sets to another value than the live one, owned by
    // another manager.
    let mut conflicts = Vec::new();
    let mut taken = FieldSet::default();
    for entry in entries.iter().filter(|e| !mine(e)) {
        for path in entry.fields.intersection(&owned).leaves() {
            let differs = value_at(live, &path) != value_at(config, &path);
            let is_item_marker =
                value_at(config, &path).is_some_and(Value::is_object) && !owned_leaf(&owned, &path);
            if differs && !is_item_marker {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    api_version: entry.api_version.clone(),
                    field: path_string(&path),
                });
                taken = taken.union(&single(&path));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut object = live.clone();
    // What this manager applied before and applies no more goes, unless another owns it.
    let others = entries
        .iter()
        .filter(|e| !mine(e))
        .fold(FieldSet::default(), |acc, e| acc.union(&e.fields));
    remove(
        &mut object,
        &previous.difference(&owned).difference(&others),
    );
    // The main resource's apply sets everything but status; the status subresource's only it.
    let content = if subresource == Some("status") {
        json!({ "status": config.get("status").cloned().unwrap_or_else(|| json!({})) })
    } else {
        let mut content = config.clone();
        if let Some(fields) = content.as_object_mut() {
            fields.remove("apiVersion");
            fields.remove("kind");
            fields.remove("status");
        }
        content
    };
    merge(&mut object, &content, shape);
    // Forced: the fields taken are no longer the others'.
    for entry in entries.iter_mut().filter(|e| !mine(e)) {
        entry.fields = entry.fields.difference(&taken);
    }
    // An apply that changes nothing keeps its entry's time, as Kubernetes' does (so that the
    // write that would record only a new time is no write at all).
    let unchanged = without_managed_fields(&object) == without_managed_fields(live);
    let time = entries
        .iter()
        .find(|e| mine(e))
        .filter(|_| unchanged)
        .map_or(time, |e| e.time.as_str())
        .to_owned();
    entries.retain(|e| !mine(e));
    entries.push(ManagedEntry {
        manager: manager.to_owned(),
        operation: "Apply".to_owned(),
        api_version: api_version.to_owned(),
        time,
        subresource: subresource.map(str::to_owned),
        fields: owned,
    });
    set_managed_fields(&mut object, &entries);
    Ok(object)
}

fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("managedFields");
    }
    object
}

fn owned_leaf(set: &FieldSet, path: &[String]) -> bool {
    let mut node = set;
    for element in path {
        match node.children.get(element) {
            Some(child) => node = child,
            None => return false,
        }
    }
    node.member && node.children.is_empty()
}

fn single(path: &[String]) -> FieldSet {
    let mut set = FieldSet::leaf();
    for element in path.iter().rev() {
        let mut parent = FieldSet::default();
        parent.children.insert(element.clone(), set);
        set = parent;
    }
    set
}

/// Records an ordinary write (create, update, patch) by `manager`: it owns what it changed,
/// which the other managers no longer own; fields it removed are no one's.
pub fn record_update(old: &Value, new: &mut Value, writer: &Writer<'_>, shape: Shape<'_>) {
    let Writer {
        manager,
        api_version,
        time,
        subresource,
    } = *writer;
    let mut entries = managed_fields(old);
    let before = FieldSet::of_object(old, shape, subresource);
    let after = FieldSet::of_object(new, shape, subresource);
    let removed = before.difference(&after);
    let mut changed = after.difference(&before);
    for path in after.intersection(&before).leaves() {
        if value_at(old, &path) != value_at(new, &path) {
            changed = changed.union(&single(&path));
        }
    }
    if changed.is_empty() && removed.is_empty() {
        // Nothing of its own: the managers stay as they were (or as the client sent them).
        if new["metadata"].get("managedFields").is_none() {
            set_managed_fields(new, &entries);
        }
        return;
    }
    for entry in &mut entries {
        entry.fields = entry.fields.difference(&changed).difference(&removed);
    }
    let subresource = subresource.map(str::to_owned);
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
    {
        Some(entry) => {
            entry.fields = entry.fields.union(&changed);
            entry.time = time.to_owned();
            entry.api_version = api_version.to_owned();
        }
        None => entries.push(ManagedEntry {
            manager: manager.to_owned(),
            operation: "Update".to_owned(),
            api_version: api_version.to_owned(),
            time: time.to_owned(),
            subresource,
            fields: changed,
        }),
    }
    set_managed_fields(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            time: "2026-01-01T00:00:00Z",
            subresource: None,
        }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "web", "image": image, "ports": [{"containerPort": 80}]},
            ]}}},
        })
    }

    #[test]
    fn an_apply_that_changes_nothing_keeps_its_time() {
        let first = apply(
            &json!({}),
            &deployment(2, "nginx"),
            &by("ci"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        let later = Writer {
            time: "2026-02-02T00:00:00Z",
            ..by("ci")
        };
        let again = apply(
            &first,
            &deployment(2, "nginx"),
            &later,
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        assert_eq!(again, first, "the same object, time included");
        let changed = apply(
            &first,
            &deployment(3, "nginx"),
            &later,
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        assert_eq!(managed_fields(&changed)[0].time, "2026-02-02T00:00:00Z");
    }

    #[test]
    fn ports_of_one_number_and_two_protocols_are_two_items() {
        let service = |ports: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
                "spec": {"ports": ports}})
        };
        // Live, as stored: defaulted protocols.
        let mut live = service(json!([
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]));
        // An applied port without a protocol is the TCP one.
        merge(
            &mut live,
            &service(json!([{"name": "dns-tcp", "port": 53, "targetPort": 5353}])),
            Shape::BUILT_IN,
        );
        let ports = live["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 2, "{live}");
        assert_eq!(ports[0]["protocol"], "UDP");
        assert!(ports[0].get("targetPort").is_none());
        assert_eq!(ports[1]["targetPort"], 5353);
        let set = FieldSet::of_object(&live, Shape::BUILT_IN, None).to_fields_v1();
        let keys: Vec<&String> = set["f:spec"]["f:ports"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            keys,
            [
                r#"k:{"port":53,"protocol":"TCP"}"#,
                r#"k:{"port":53,"protocol":"UDP"}"#
            ]
        );
    }

    #[test]
    fn field_sets_use_kubernetes_fields_v1_keys() {
        let set = FieldSet::of_object(&deployment(2, "nginx"), Shape::BUILT_IN, None);
        let v1 = set.to_fields_v1();
        let container =
            &v1["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"web"}"#];
        assert_eq!(container["."], json!({}), "{v1}");
        assert_eq!(container["f:image"], json!({}));
        // Ports are keyed by number and protocol, TCP when unset, as Kubernetes keys them.
        assert_eq!(
            container["f:ports"][r#"k:{"containerPort":80,"protocol":"TCP"}"#]["f:containerPort"],
            json!({}),
            "{v1}"
        );
        assert_eq!(v1["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert!(v1.get("f:apiVersion").is_none() && v1.get("f:kind").is_none());
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
    }

    #[test]
    fn two_appliers_share_equal_fields_and_conflict_on_different_ones() {
        let created = apply(
            &json!({}),
            &deployment(2, "nginx"),
            &by("a"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        assert_eq!(created["spec"]["replicas"], 2);
        // The same values: shared, no conflict.
        let shared = apply(
            &created,
            &deployment(2, "nginx"),
            &by("b"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        assert_eq!(managed_fields(&shared).len(), 2);
        // Another value for a field "a" owns: a conflict naming it.
        let err = apply(
            &shared,
            &deployment(3, "nginx"),
            &by("b"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap_err();
        assert_eq!(
            err,
            [Conflict {
                manager: "a".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert_eq!(
            conflict_message(&err),
            r#"Apply failed with 1 conflict: conflict with "a" using apps/v1: .spec.replicas"#
        );
        // Forced, "b" takes the field: "a" no longer owns it.
        let forced = apply(
            &shared,
            &deployment(3, "nginx"),
            &by("b"),
            true,
            Shape::BUILT_IN,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let a = managed_fields(&forced)
            .into_iter()
            .find(|e| e.manager == "a")
            .unwrap();
        assert!(
            value_at(
                &a.fields.to_fields_v1(),
                &["f:spec".into(), "f:replicas".into()]
            )
            .is_none()
        );
    }

    #[test]
    fn fields_an_applier_drops_are_removed_unless_another_owns_them() {
        let mut config = deployment(2, "nginx");
        config["metadata"]["labels"]["tier"] = json!("front");
        let live = apply(&json!({}), &config, &by("a"), false, Shape::BUILT_IN).unwrap();
        let dropped = apply(
            &live,
            &deployment(2, "nginx"),
            &by("a"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        assert!(
            dropped["metadata"]["labels"].get("tier").is_none(),
            "{dropped}"
        );
        assert_eq!(dropped["metadata"]["labels"]["app"], "web");
        // A container added by another manager survives an apply that never named it.
        let mut two = live.clone();
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        record_update(&live, &mut two, &by("kubectl-edit"), Shape::BUILT_IN);
        let again = apply(
            &two,
            &deployment(2, "nginx:2"),
            &by("a"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        let names: Vec<&str> = again["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web", "sidecar"]);
        assert_eq!(
            again["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
    }

    #[test]
    fn an_update_takes_the_fields_it_changes() {
        let live = apply(
            &json!({}),
            &deployment(2, "nginx"),
            &by("a"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(&live, &mut scaled, &by("kubectl-scale"), Shape::BUILT_IN);
        let entries = managed_fields(&scaled);
        let scale = entries
            .iter()
            .find(|e| e.manager == "kubectl-scale")
            .unwrap();
        assert_eq!(
            scale.fields.leaves(),
            [vec!["f:spec".to_owned(), "f:replicas".to_owned()]]
        );
        // Now a conflict for "a" re-applying its old count.
        let err = apply(
            &scaled,
            &deployment(2, "nginx"),
            &by("a"),
            false,
            Shape::BUILT_IN,
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "kubectl-scale");
    }

    #[test]
    fn custom_schemas_give_list_types() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name"], "items": {"type": "object"}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        }}}});
        let shape = Shape::Schema(Some(&schema));
        let mut live = json!({"spec": {"ports": [{"name": "a", "port": 1}], "tags": ["x"]}});
        merge(
            &mut live,
            &json!({"spec": {"ports": [{"name": "b", "port": 2}], "tags": ["y"]}}),
            shape,
        );
        assert_eq!(live["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(live["spec"]["tags"], json!(["x", "y"]));
    }
}
