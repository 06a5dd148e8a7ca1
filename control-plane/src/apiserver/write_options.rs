//! The options every write verb reads from its query string (and a delete also from its body):
//! kube-apiserver's `CreateOptions`, `UpdateOptions`, `PatchOptions` and `DeleteOptions`.

use std::collections::HashMap;

use serde_json::Value;

use super::error::ApiError;

/// The one value `dryRun` takes.
const DRY_RUN_ALL: &str = "All";

/// What a write request asked for besides its object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// `dryRun=All`: the write runs through defaulting, admission and validation, and its
    /// answer is what would have been stored, but nothing is stored and nothing it would set
    /// off (allocations, garbage collection) happens.
    pub dry_run: bool,
    /// What to do about fields the kind does not know (`fieldValidation`).
    pub field_validation: FieldValidation,
    /// Who is writing, for `managedFields`: `fieldManager` as the client named it.
    pub field_manager: Option<String>,
    /// The manager of a client that names none: its `User-Agent` up to the first `/`
    /// (kube-apiserver's default). Both are `None` for the server's own writes, which are not
    /// tracked.
    pub default_manager: Option<String>,
    /// `force=true`: an apply takes the fields other managers own.
    pub force: bool,
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it (the Python client sends
/// `True`).
pub fn parse_bool(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// kube-apiserver's limit on `fieldManager`.
const MAX_FIELD_MANAGER_LENGTH: usize = 128;

/// `fieldValidation`: what a write does about unknown fields, which are dropped either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    /// A `Warning` header per field: Kubernetes' default.
    #[default]
    Warn,
    /// The write fails with a 400 naming them.
    Strict,
}

impl FieldValidation {
    fn parse(value: Option<&String>) -> Result<Self, ApiError> {
        match value.map(String::as_str) {
            None | Some("") => Ok(Self::default()),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, or Strict, got {other:?}"
            ))),
        }
    }
}

impl WriteOptions {
    /// Reports the unknown fields a write dropped, as `fieldValidation` says.
    pub fn unknown_fields(&self, paths: &[String]) -> Result<(), ApiError> {
        self.report("unknown", paths)
    }

    /// Reports the fields a JSON body named twice (the last one counts), as `fieldValidation`
    /// says.
    pub fn duplicate_fields(&self, paths: &[String]) -> Result<(), ApiError> {
        self.report("duplicate", paths)
    }

    fn report(&self, what: &str, paths: &[String]) -> Result<(), ApiError> {
        if paths.is_empty() {
            return Ok(());
        }
        let each = || paths.iter().map(|p| format!("{what} field {p:?}"));
        match self.field_validation {
            FieldValidation::Ignore => Ok(()),
            FieldValidation::Warn => {
                each().for_each(super::warnings::add);
                Ok(())
            }
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                each().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

impl WriteOptions {
    /// The options of a write from its query. `kind` names the options type in errors
    /// (`CreateOptions`, `UpdateOptions`, `PatchOptions`, `DeleteOptions`), as Kubernetes'
    /// 422 for a bad `dryRun` does.
    pub fn from_query(query: &HashMap<String, String>, kind: &str) -> Result<Self, ApiError> {
        let values: Vec<&str> = query
            .get("dryRun")
            .map(|v| v.split(',').filter(|v| !v.is_empty()).collect())
            .unwrap_or_default();
        let field_manager = query.get("fieldManager").filter(|m| !m.is_empty());
        if let Some(manager) = field_manager {
            let bad = if manager.len() > MAX_FIELD_MANAGER_LENGTH {
                Some(format!(
                    "must be at most {MAX_FIELD_MANAGER_LENGTH} characters"
                ))
            } else if manager.chars().any(|c| c.is_control() || !c.is_ascii()) {
                Some("must only contain printable characters".to_owned())
            } else {
                None
            };
            if let Some(why) = bad {
                let message = format!("fieldManager: Invalid value: {manager:?}: {why}");
                return Err(ApiError::invalid(
                    kind,
                    "meta.k8s.io",
                    "",
                    &[("fieldManager".to_owned(), message)],
                ));
            }
        }
        Ok(Self {
            field_validation: FieldValidation::parse(query.get("fieldValidation"))?,
            field_manager: field_manager.cloned(),
            force: query.get("force").is_some_and(|f| parse_bool(f)),
            ..Self::from_dry_run(&values, kind)?
        })
    }

    /// The options of a delete: its query, and a `DeleteOptions` body's `dryRun` list (what
    /// typed clients send).
    pub fn for_delete(query: &HashMap<String, String>, body: &Value) -> Result<Self, ApiError> {
        let mut options = Self::from_query(query, "DeleteOptions")?;
        if let Some(values) = body["dryRun"].as_array() {
            let values: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
            let from_body = Self::from_dry_run(&values, "DeleteOptions")?;
            options.dry_run |= from_body.dry_run;
        }
        Ok(options)
    }

    /// The options of a request from a client: the manager defaults to its `User-Agent`'s
    /// product (`kubectl/v1.32.0 (linux/amd64) …` writes as `kubectl`).
    pub fn from_request(
        query: &HashMap<String, String>,
        user_agent: Option<&str>,
        kind: &str,
    ) -> Result<Self, ApiError> {
        let mut options = Self::from_query(query, kind)?;
        let product = user_agent
            .and_then(|ua| ua.split('/').next())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("unknown");
        options.default_manager = Some(product.chars().take(MAX_FIELD_MANAGER_LENGTH).collect());
        Ok(options)
    }

    /// Whether a client's write is checked for fields its kind does not know.
    pub fn validates_fields(&self) -> bool {
        self.manager().is_some() && self.field_validation != FieldValidation::Ignore
    }

    /// Who the write's `managedFields` name, if it is tracked.
    pub fn manager(&self) -> Option<&str> {
        self.field_manager
            .as_deref()
            .or(self.default_manager.as_deref())
    }

    fn from_dry_run(values: &[&str], kind: &str) -> Result<Self, ApiError> {
        match values {
            [] => Ok(Self::default()),
            [DRY_RUN_ALL] => Ok(Self {
                dry_run: true,
                ..Self::default()
            }),
            _ => {
                let sent: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
                let message = format!(
                    "dryRun: Unsupported value: []string{{{}}}: supported values: \"{DRY_RUN_ALL}\"",
                    sent.join(", ")
                );
                Err(ApiError::invalid(
                    kind,
                    "meta.k8s.io",
                    "",
                    &[("dryRun".to_owned(), message)],
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn dry_run_all_is_the_only_value() {
        assert!(
            WriteOptions::from_query(&query(&[("dryRun", "All")]), "CreateOptions")
                .unwrap()
                .dry_run
        );
        assert!(
            !WriteOptions::from_query(&query(&[]), "CreateOptions")
                .unwrap()
                .dry_run
        );
        let e =
            WriteOptions::from_query(&query(&[("dryRun", "Some")]), "CreateOptions").unwrap_err();
        assert_eq!(e.code.as_u16(), 422);
        assert!(e.message.contains("CreateOptions"), "{}", e.message);
        assert!(
            e.message.contains(r#"Unsupported value: []string{"Some"}"#),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_delete_takes_dry_run_from_its_body_too() {
        let body = serde_json::json!({ "kind": "DeleteOptions", "dryRun": ["All"] });
        assert!(
            WriteOptions::for_delete(&query(&[]), &body)
                .unwrap()
                .dry_run
        );
        let bad = serde_json::json!({ "dryRun": ["All", "All"] });
        assert!(WriteOptions::for_delete(&query(&[]), &bad).is_err());
        assert!(
            !WriteOptions::for_delete(&query(&[]), &Value::Null)
                .unwrap()
                .dry_run
        );
    }
}
