//! Label selectors: the structured `LabelSelector` of specs, and the string form of
//! `?labelSelector=` / `kubectl -l` (`app=web,tier in (fe,be),!canary`). Field selectors
//! (`?fieldSelector=spec.nodeName=n1`) too.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Labels to match: every `matchLabels` pair and every `matchExpressions` requirement.
/// An empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement: `key` `operator` `values`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// A selector of `matchLabels` only.
    pub fn from_labels<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether it selects nothing in particular, i.e. everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every requirement. An unknown operator matches nothing
    /// (validation rejects it first).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// The same requirements as a [`Selector`] (whose `Display` is the query-string form).
    pub fn to_selector(&self) -> Selector {
        let mut reqs: Vec<Requirement> = self
            .match_labels
            .iter()
            .map(|(k, v)| Requirement::new(k, Operator::Equals, [v]))
            .collect();
        for r in &self.match_expressions {
            let op = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                // Never matches, like `matches` for an unknown operator.
                _ => Operator::In,
            };
            let values = if r.operator == "In" || r.operator == "NotIn" {
                r.values.clone()
            } else {
                Vec::new()
            };
            reqs.push(Requirement::new(&r.key, op, values));
        }
        Selector(reqs)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_selector().fmt(f)
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.contains(v)),
            "NotIn" => value.is_none_or(|v| !self.values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    }
}

/// The operator of a parsed [`Requirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// Numeric `>`: the label's value parses as an integer greater than the single value.
    GreaterThan,
    /// Numeric `<`.
    LessThan,
}

/// One requirement of a string selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// A requirement; `values` is ignored by `Exists` and `DoesNotExist`.
    pub fn new<V: Into<String>>(
        key: impl Into<String>,
        operator: Operator,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        Self {
            key: key.into(),
            operator,
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let num = |v: &String| v.parse::<i64>().ok();
        let bound = self.values.first().and_then(num);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan => {
                matches!((value.and_then(num), bound), (Some(v), Some(b)) if v > b)
            }
            Operator::LessThan => {
                matches!((value.and_then(num), bound), (Some(v), Some(b)) if v < b)
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        let first = self.values.first().map_or("", String::as_str);
        match self.operator {
            Operator::Equals => write!(f, "{k}={first}"),
            Operator::NotEquals => write!(f, "{k}!={first}"),
            Operator::In => write!(f, "{k} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{k} notin ({})", self.values.join(",")),
            Operator::Exists => write!(f, "{k}"),
            Operator::DoesNotExist => write!(f, "!{k}"),
            Operator::GreaterThan => write!(f, "{k}>{first}"),
            Operator::LessThan => write!(f, "{k}<{first}"),
        }
    }
}

/// A parsed label selector string: all requirements must hold. Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector(pub Vec<Requirement>);

/// A selector string that does not parse. Not retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

impl Selector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            r.fmt(f)?;
        }
        Ok(())
    }
}

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, SelectorError> {
    let (mut depth, mut start, mut terms) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(SelectorError(format!("unbalanced parentheses in {s:?}")));
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unclosed parenthesis in {s:?}")));
    }
    terms.push(&s[start..]);
    Ok(terms)
}

fn check_key(key: &str) -> Result<(), SelectorError> {
    match crate::validation::is_qualified_name(key).into_iter().next() {
        None => Ok(()),
        Some(msg) => Err(SelectorError(format!("invalid label key {key:?}: {msg}"))),
    }
}

fn check_value(value: &str) -> Result<(), SelectorError> {
    match crate::validation::is_valid_label_value(value)
        .into_iter()
        .next()
    {
        None => Ok(()),
        Some(msg) => Err(SelectorError(format!(
            "invalid label value: {value:?}: {msg}"
        ))),
    }
}

fn parse_term(term: &str) -> Result<Requirement, SelectorError> {
    let term = term.trim();
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement::new(
            key,
            Operator::DoesNotExist,
            None::<String>,
        ));
    }
    let key_end = term
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .unwrap_or(term.len());
    let (key, rest) = (&term[..key_end], term[key_end..].trim_start());
    if key.is_empty() {
        return Err(SelectorError(format!("{term:?}: missing key")));
    }
    check_key(key)?;
    let single = |op: Operator, value: &str| -> Result<Requirement, SelectorError> {
        let value = value.trim();
        check_value(value)?;
        if matches!(op, Operator::GreaterThan | Operator::LessThan) && value.parse::<i64>().is_err()
        {
            return Err(SelectorError(format!(
                "{term:?}: {value:?} is not an integer"
            )));
        }
        Ok(Requirement::new(key, op, [value]))
    };
    if rest.is_empty() {
        return Ok(Requirement::new(key, Operator::Exists, None::<String>));
    }
    for (token, op) in [
        ("==", Operator::Equals),
        ("!=", Operator::NotEquals),
        ("=", Operator::Equals),
        (">", Operator::GreaterThan),
        ("<", Operator::LessThan),
    ] {
        if let Some(value) = rest.strip_prefix(token) {
            return single(op, value);
        }
    }
    for (word, op) in [("notin", Operator::NotIn), ("in", Operator::In)] {
        let Some(list) = rest.strip_prefix(word) else {
            continue;
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| SelectorError(format!("{term:?}: expected a list in parentheses")))?;
        let values: Vec<&str> = if inner.trim().is_empty() {
            Vec::new()
        } else {
            inner.split(',').map(str::trim).collect()
        };
        values.iter().try_for_each(|v| check_value(v))?;
        return Ok(Requirement::new(key, op, values));
    }
    Err(SelectorError(format!("{term:?}: unknown operator")))
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        split_terms(s)?
            .into_iter()
            .map(parse_term)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// A parsed field selector (`metadata.name=web,status.phase!=Running`): equality only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// One `field=value` or `field!=value` term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    /// A dotted JSON path such as `spec.nodeName`.
    pub field: String,
    /// `true` for `=`/`==`, `false` for `!=`.
    pub equals: bool,
    pub value: String,
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        s.split(',')
            .map(|term| {
                let (field, equals, value) = if let Some((f, v)) = term.split_once("!=") {
                    (f, false, v)
                } else if let Some((f, v)) = term.split_once("==") {
                    (f, true, v)
                } else if let Some((f, v)) = term.split_once('=') {
                    (f, true, v)
                } else {
                    return Err(SelectorError(format!("{term:?}: expected field=value")));
                };
                Ok(FieldRequirement {
                    field: field.trim().to_owned(),
                    equals,
                    value: value.trim().to_owned(),
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl FieldSelector {
    /// The fields it names, to check against [`crate::resource::ResourceInfo::supports_field`].
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.field.as_str())
    }

    /// Whether an object (as JSON) satisfies every term. A missing field reads as `""`,
    /// booleans and numbers as their JSON text, as Kubernetes' field sets do.
    pub fn matches_json(&self, object: &serde_json::Value) -> bool {
        self.0.iter().all(|r| {
            let found = r.field.split('.').try_fold(object, |v, part| v.get(part));
            let actual = match found {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == r.value) == r.equals
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_set_based_expressions() {
        let sel: LabelSelector = serde_json::from_str(
            r#"{"matchLabels":{"app":"web"},"matchExpressions":[
                {"key":"tier","operator":"In","values":["fe","be"]},
                {"key":"env","operator":"NotIn","values":["dev"]},
                {"key":"team","operator":"Exists"},
                {"key":"canary","operator":"DoesNotExist"}]}"#,
        )
        .unwrap();
        let mut l = labels(&[("app", "web"), ("tier", "fe"), ("team", "a")]);
        assert!(sel.matches(&l));
        l.insert("env".into(), "prod".into());
        assert!(sel.matches(&l), "NotIn with another value matches");
        l.insert("env".into(), "dev".into());
        assert!(!sel.matches(&l));
        l.remove("env");
        l.insert("canary".into(), "true".into());
        assert!(!sel.matches(&l), "DoesNotExist");
        l.remove("canary");
        l.remove("team");
        assert!(!sel.matches(&l), "Exists");
        l.insert("team".into(), "a".into());
        l.insert("tier".into(), "db".into());
        assert!(!sel.matches(&l), "In");
        l.insert("app".into(), "api".into());
        assert!(!sel.matches(&labels(&[("tier", "fe"), ("team", "a")])));
    }

    #[test]
    fn empty_selector_matches_everything_and_bad_operator_nothing() {
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
        assert!(LabelSelector::default().matches(&BTreeMap::new()));
        let bad = LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Equals".into(),
                values: vec!["b".into()],
            }],
            ..Default::default()
        };
        assert!(!bad.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn selector_strings_parse_like_kubectl() {
        let s: Selector = "app=web, tier in (fe, be),env!=dev,!canary,team,rank>2,gen==3"
            .parse()
            .unwrap();
        assert_eq!(s.0.len(), 7);
        assert_eq!(s.0[1], Requirement::new("tier", Operator::In, ["fe", "be"]));
        assert_eq!(
            s.to_string(),
            "app=web,tier in (fe,be),env!=dev,!canary,team,rank>2,gen=3"
        );
        let l = labels(&[
            ("app", "web"),
            ("tier", "be"),
            ("team", "x"),
            ("rank", "3"),
            ("gen", "3"),
        ]);
        assert!(s.matches(&l));
        assert!(!"rank<3".parse::<Selector>().unwrap().matches(&l));
        assert!("tier notin (fe)".parse::<Selector>().unwrap().matches(&l));
        assert!("".parse::<Selector>().unwrap().matches(&l));
        for bad in [
            "app=(", "=web", "a in fe", "a b", "x=-bad-", "rank>two", "a in (b",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }

    #[test]
    fn label_selector_renders_as_a_query_string() {
        let sel = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: vec!["db".into()],
            }],
        };
        assert_eq!(sel.to_string(), "app=web,tier notin (db)");
        let parsed: Selector = sel.to_string().parse().unwrap();
        assert_eq!(parsed, sel.to_selector());
    }

    #[test]
    fn field_selectors_match_json_paths() {
        let pod = serde_json::json!({"metadata":{"name":"web-0","namespace":"default"},
            "spec":{"nodeName":"n1","hostNetwork":true},"status":{"phase":"Running"}});
        let ok: FieldSelector = "spec.nodeName=n1,status.phase!=Pending,metadata.name==web-0"
            .parse()
            .unwrap();
        assert!(ok.matches_json(&pod));
        assert!(
            !"spec.nodeName=n2"
                .parse::<FieldSelector>()
                .unwrap()
                .matches_json(&pod)
        );
        assert!(
            "spec.hostNetwork=true"
                .parse::<FieldSelector>()
                .unwrap()
                .matches_json(&pod)
        );
        assert!(
            "spec.schedulerName="
                .parse::<FieldSelector>()
                .unwrap()
                .matches_json(&pod)
        );
        assert!("nonsense".parse::<FieldSelector>().is_err());
        assert_eq!(
            ok.fields().collect::<Vec<_>>(),
            ["spec.nodeName", "status.phase", "metadata.name"]
        );
    }
}
