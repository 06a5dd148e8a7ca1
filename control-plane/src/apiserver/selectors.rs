//! Label selectors (`app=web,tier!=db,env in (a,b),!legacy`) and field selectors
//! (`metadata.name=x,spec.nodeName!=n1`) as query parameters, evaluated on stored JSON.

use serde_json::Value;

use super::error::ApiError;

/// One parsed label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(key: &str, rest: &str, selector: &str) -> Result<(String, Vec<String>), ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| invalid_selector(selector, "expected a parenthesized set of values"))?;
    let values = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    Ok((key.to_owned(), values))
}

fn invalid_selector(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: invalid label selector {selector:?}: {why}"
    ))
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                let (key, values) = parse_set(key.trim(), rest, selector)?;
                Requirement::NotIn(key, values)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                let (key, values) = parse_set(key.trim(), rest, selector)?;
                Requirement::In(key, values)
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(part.to_owned())
            } else {
                return Err(invalid_selector(selector, "unknown operator"));
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object (its JSON) carries matching `metadata.labels`.
    pub fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| object["metadata"]["labels"][key].as_str();
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// The fields every resource can be selected by, plus the ones of pods.
const FIELDS: &[(&str, &[&str])] = &[
    ("metadata.name", &["metadata", "name"]),
    ("metadata.namespace", &["metadata", "namespace"]),
    ("spec.nodeName", &["spec", "nodeName"]),
    ("spec.schedulerName", &["spec", "schedulerName"]),
    ("spec.signerName", &["spec", "signerName"]),
    ("status.phase", &["status", "phase"]),
    // PersistentVolumes' and claims' bare `name` (Kubernetes keeps it for compatibility).
    ("name", &["metadata", "name"]),
    // Events, as `kubectl describe` selects them.
    ("involvedObject.kind", &["involvedObject", "kind"]),
    ("involvedObject.name", &["involvedObject", "name"]),
    ("involvedObject.namespace", &["involvedObject", "namespace"]),
    ("involvedObject.uid", &["involvedObject", "uid"]),
    (
        "involvedObject.apiVersion",
        &["involvedObject", "apiVersion"],
    ),
    (
        "involvedObject.resourceVersion",
        &["involvedObject", "resourceVersion"],
    ),
    ("involvedObject.fieldPath", &["involvedObject", "fieldPath"]),
    ("reason", &["reason"]),
    ("type", &["type"]),
    ("source", &["source", "component"]),
    ("reportingComponent", &["reportingComponent"]),
];

/// A parsed `fieldSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (path in the object, value, equal?)
    terms: Vec<(&'static [&'static str], String, bool)>,
}

impl FieldSelector {
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {selector:?}: {part:?} has no operator"
                )));
            };
            let field = field.trim();
            let path = FIELDS
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, path)| *path)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("field label not supported: {field}"))
                })?;
            terms.push((path, value.trim().to_owned(), equal));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The `metadata.name=X` term, if any: lets a get-like watch or list skip the scan.
    pub fn name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(path, _, equal)| *equal && *path == ["metadata", "name"])
            .map(|(_, value, _)| value.as_str())
    }

    /// The value an equality term requires of the field at `path` (e.g. `spec.nodeName=X`), if
    /// there is one: lets watches be indexed by it.
    pub fn required(&self, path: &[&str]) -> Option<&str> {
        self.terms
            .iter()
            .find(|(p, _, equal)| *equal && *p == path)
            .map(|(_, value, _)| value.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(path, value, equal)| {
            let actual = path
                .iter()
                .fold(object, |v, segment| &v[*segment])
                .as_str()
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_set_based_label_selectors() {
        let web = pod(json!({"app": "web", "tier": "front"}));
        let db = pod(json!({"app": "db"}));
        let sel = |s| LabelSelector::parse(s).unwrap();
        assert!(sel("app=web").matches(&web));
        assert!(sel("app==web,tier").matches(&web));
        assert!(!sel("app=web").matches(&db));
        assert!(sel("app!=web").matches(&db));
        assert!(sel("app in (web, db)").matches(&db));
        assert!(sel("app notin (web),!tier").matches(&db));
        assert!(!sel("app notin (web)").matches(&web));
        assert!(sel("").matches(&web));
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selectors_on_the_supported_fields() {
        let p = pod(json!({}));
        let sel = |s| FieldSelector::parse(s).unwrap();
        assert!(sel("metadata.name=p,spec.nodeName=n1").matches(&p));
        assert!(sel("status.phase!=Pending").matches(&p));
        assert!(!sel("metadata.namespace=kube-system").matches(&p));
        assert_eq!(sel("metadata.name=p").name(), Some("p"));
        let event =
            json!({"involvedObject": {"kind": "Pod", "name": "p", "uid": "u1"}, "type": "Warning"});
        assert!(sel("involvedObject.name=p,involvedObject.uid=u1,type=Warning").matches(&event));
        let err = FieldSelector::parse("spec.foo=bar").unwrap_err();
        assert_eq!(err.code.as_u16(), 400);
        assert!(err.message.contains("spec.foo"), "{}", err.message);
    }
}
