//! `apiextensions.k8s.io/v1`: CustomResourceDefinition, and its validation as
//! apiextensions-apiserver does it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    meta::Object,
    validation::{self, ErrorList, FieldError, NameRule},
};

/// A new kind served by the API server, described by its names, scope and versions.
pub type CustomResourceDefinition = Object<CustomResourceDefinitionSpec, Value>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CustomResourceDefinitionSpec {
    pub group: String,
    pub names: Names,
    /// `Namespaced` or `Cluster`.
    pub scope: String,
    pub versions: Vec<Version>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preserve_unknown_fields: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Names {
    pub plural: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub singular: String,
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub list_kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Version {
    pub name: String,
    pub served: bool,
    pub storage: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deprecated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecation_warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Validation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresources: Option<Subresources>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_printer_columns: Vec<PrinterColumn>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Validation {
    #[serde(rename = "openAPIV3Schema", skip_serializing_if = "Option::is_none")]
    pub open_api_v3_schema: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Subresources {
    /// Present (`{}`) when the version serves `/status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleSubresource>,
}

/// Where a custom object keeps what the `scale` subresource reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScaleSubresource {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector_path: Option<String>,
}

/// A column `kubectl get` shows for the kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PrinterColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub format: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: i32,
    pub json_path: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl CustomResourceDefinitionSpec {
    /// The version objects are stored at.
    pub fn storage_version(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.storage)
    }

    /// `names.singular`, or the kind lowercased when it is left out (Kubernetes' default).
    pub fn singular(&self) -> String {
        if self.names.singular.is_empty() {
            self.names.kind.to_ascii_lowercase()
        } else {
            self.names.singular.clone()
        }
    }
}

impl Version {
    /// The version's `openAPIV3Schema`.
    pub fn schema(&self) -> Option<&Value> {
        self.schema.as_ref()?.open_api_v3_schema.as_ref()
    }

    pub fn has_status(&self) -> bool {
        self.subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    }

    pub fn scale(&self) -> Option<&ScaleSubresource> {
        self.subresources.as_ref()?.scale.as_ref()
    }
}

/// A DNS-1035 label of lowercase letters, digits and '-' starting with a letter, as names.plural
/// and friends must be.
fn dns_label_errors(path: &str, value: &str, errs: &mut ErrorList) {
    for problem in validation::is_dns1035_label(value) {
        errs.push(FieldError::invalid(path, value, problem));
    }
}

/// apiextensions-apiserver's `ValidateCustomResourceDefinition`: the name is
/// `<plural>.<group>`, names are DNS labels, exactly one storage version, versions unique and
/// well formed, every schema structural, printer columns with a JSONPath.
pub fn validate_crd(crd: &CustomResourceDefinition) -> ErrorList {
    let mut errs = validation::validate_object_meta(&crd.metadata, false, NameRule::Subdomain);
    let spec = &crd.spec;
    if spec.group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    } else {
        for problem in validation::is_dns1123_subdomain(&spec.group) {
            errs.push(FieldError::invalid("spec.group", &spec.group, problem));
        }
        if !spec.group.contains('.') {
            errs.push(FieldError::invalid(
                "spec.group",
                &spec.group,
                "should be a domain with at least one dot",
            ));
        }
    }
    let expected = format!("{}.{}", spec.names.plural, spec.group);
    if crd.metadata.name != expected {
        errs.push(FieldError::invalid(
            "metadata.name",
            &crd.metadata.name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !matches!(spec.scope.as_str(), "Namespaced" | "Cluster") {
        errs.push(FieldError::not_supported(
            "spec.scope",
            &spec.scope,
            &["Cluster", "Namespaced"],
        ));
    }
    validate_names(&spec.names, &mut errs);
    validate_versions(spec, &mut errs);
    if let Some(strategy) = spec
        .conversion
        .as_ref()
        .and_then(|c| c["strategy"].as_str())
        && strategy != "None"
    {
        errs.push(FieldError::not_supported(
            "spec.conversion.strategy",
            strategy,
            &["None"],
        ));
    }
    if spec.preserve_unknown_fields == Some(true) {
        errs.push(FieldError::invalid(
            "spec.preserveUnknownFields",
            "true",
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
    errs
}

/// An update of a CRD: valid as a CRD, and its scope never changes (objects are stored under
/// it).
pub fn validate_crd_update(
    old: &CustomResourceDefinition,
    new: &CustomResourceDefinition,
) -> ErrorList {
    let mut errs = validation::validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_crd(new));
    if old.spec.scope != new.spec.scope {
        errs.push(FieldError::invalid(
            "spec.scope",
            &new.spec.scope,
            "field is immutable",
        ));
    }
    if old.spec.group != new.spec.group {
        errs.push(FieldError::invalid(
            "spec.group",
            &new.spec.group,
            "field is immutable",
        ));
    }
    errs
}

fn validate_names(names: &Names, errs: &mut ErrorList) {
    if names.plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural"));
    } else {
        dns_label_errors("spec.names.plural", &names.plural, errs);
    }
    if !names.singular.is_empty() {
        dns_label_errors("spec.names.singular", &names.singular, errs);
    }
    for (i, short) in names.short_names.iter().enumerate() {
        dns_label_errors(&format!("spec.names.shortNames[{i}]"), short, errs);
    }
    for (i, category) in names.categories.iter().enumerate() {
        dns_label_errors(&format!("spec.names.categories[{i}]"), category, errs);
    }
    for (path, kind) in [
        ("spec.names.kind", &names.kind),
        ("spec.names.listKind", &names.list_kind),
    ] {
        if kind.is_empty() {
            if path == "spec.names.kind" {
                errs.push(FieldError::required(path));
            }
            continue;
        }
        if !kind.starts_with(|c: char| c.is_ascii_alphabetic())
            || !kind.chars().all(|c| c.is_ascii_alphanumeric())
        {
            errs.push(FieldError::invalid(
                path,
                kind,
                "may have mixed case, but should otherwise match: ^[a-z]([-a-z0-9]*[a-z0-9])?$",
            ));
        }
    }
    if !names.list_kind.is_empty() && names.list_kind == names.kind {
        errs.push(FieldError::invalid(
            "spec.names.listKind",
            &names.list_kind,
            "kind and listKind may not be the same",
        ));
    }
}

fn validate_versions(spec: &CustomResourceDefinitionSpec, errs: &mut ErrorList) {
    if spec.versions.is_empty() {
        errs.push(FieldError::required("spec.versions"));
        return;
    }
    let storage = spec.versions.iter().filter(|v| v.storage).count();
    if storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            storage as i64,
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, version) in spec.versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        if !seen.insert(version.name.as_str()) {
            errs.push(FieldError::duplicate(format!("{path}.name"), &version.name));
        }
        dns_label_errors(&format!("{path}.name"), &version.name, errs);
        match version.schema() {
            Some(schema) => errs.extend(crate::structural::check_schema(
                schema,
                &format!("{path}.schema.openAPIV3Schema"),
            )),
            None => errs.push(FieldError::required(format!(
                "{path}.schema.openAPIV3Schema"
            ))),
        }
        if let Some(scale) = version.scale() {
            for (field, value) in [
                ("specReplicasPath", &scale.spec_replicas_path),
                ("statusReplicasPath", &scale.status_replicas_path),
            ] {
                if !value.starts_with('.') || value.len() < 2 {
                    errs.push(FieldError::invalid(
                        format!("{path}.subresources.scale.{field}"),
                        value,
                        "should be a json path under .spec or .status",
                    ));
                }
            }
        }
        for (j, column) in version.additional_printer_columns.iter().enumerate() {
            let cpath = format!("{path}.additionalPrinterColumns[{j}]");
            if column.name.is_empty() {
                errs.push(FieldError::required(format!("{cpath}.name")));
            }
            if column.json_path.is_empty() {
                errs.push(FieldError::required(format!("{cpath}.jsonPath")));
            }
            const TYPES: &[&str] = &["boolean", "date", "integer", "number", "string"];
            if !TYPES.contains(&column.type_.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("{cpath}.type"),
                    &column.type_,
                    TYPES,
                ));
            }
        }
    }
    if !spec.versions.iter().any(|v| v.served) {
        errs.push(FieldError::invalid(
            "spec.versions",
            BadValueList(spec.versions.len()),
            "must have at least one served version",
        ));
    }
}

/// How the "no served version" error prints the list (Kubernetes prints the whole slice; the
/// count says as much here).
struct BadValueList(usize);

impl From<BadValueList> for validation::BadValue {
    fn from(list: BadValueList) -> Self {
        validation::BadValue::Int(list.0 as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(yaml: &str) -> CustomResourceDefinition {
        crate::meta::from_json(serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    const GOOD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, properties: {spec: {type: object}}}
"#;

    #[test]
    fn a_well_formed_crd_is_valid() {
        assert!(
            validate_crd(&crd(GOOD)).is_empty(),
            "{:?}",
            validate_crd(&crd(GOOD))
        );
    }

    #[test]
    fn bad_crds_are_refused_with_field_paths() {
        let bad = GOOD
            .replace("name: widgets.example.com", "name: gadgets.example.com")
            .replace("storage: true", "storage: false")
            .replace("scope: Namespaced", "scope: Global")
            .replace("type: object, properties", "properties");
        let got: Vec<String> = validate_crd(&crd(&bad))
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "metadata.name: Invalid value: \"gadgets.example.com\"",
            "spec.scope: Unsupported value: \"Global\"",
            "spec.versions: Invalid value: 0: must have exactly one version marked as storage version",
            "spec.versions[0].schema.openAPIV3Schema.type: Required value",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
    }
}
