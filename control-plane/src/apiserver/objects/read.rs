//! Reading objects: get, and list with selectors and `limit`/`continue` paging.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    Api, ApiError, FieldSelector, LabelSelector, Query, ResourceType, Result, Target,
    parse_revision, present,
};
use crate::apiserver::resources::StorageKeys as _;
use crate::store::{ListOptions, Revision};

pub async fn get(
    api: &Api,
    resource: &ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value> {
    let kv = api
        .store
        .get(&resource.key(namespace, name))
        .await
        .map_err(|e| ApiError::storage(&e))?
        .ok_or_else(|| ApiError::not_found(resource.plural, resource.group, name))?;
    present(resource, &kv)
}

pub(super) fn list_prefix(target: &Target) -> String {
    match &target.namespace {
        Some(ns) => format!("{}{ns}/", target.resource.key_prefix()),
        None => target.resource.key_prefix(),
    }
}

/// The opaque `continue` token: where the next page starts and the revision it reads at.
fn encode_continue(revision: Revision, after: &str) -> String {
    let token = json!({ "rv": revision, "start": after }).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

fn decode_continue(token: &str) -> Result<(Revision, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match (value["rv"].as_i64(), value["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_owned())),
        _ => Err(bad()),
    }
}

/// Which objects a list or watch selects: its label and field selectors.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    label_selector: String,
    field_selector: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// A filter from selector strings as they appear in query parameters.
    pub fn new(label_selector: &str, field_selector: &str) -> Result<Self> {
        Ok(Self {
            label_selector: label_selector.to_owned(),
            field_selector: field_selector.to_owned(),
            labels: LabelSelector::parse(label_selector)?,
            fields: FieldSelector::parse(field_selector)?,
        })
    }

    pub(super) fn from_query(query: &Query) -> Result<Self> {
        Self::new(
            query.get("labelSelector").map_or("", String::as_str),
            query.get("fieldSelector").map_or("", String::as_str),
        )
    }

    pub(super) fn to_query(&self) -> Query {
        [
            ("labelSelector", &self.label_selector),
            ("fieldSelector", &self.field_selector),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }

    /// The value the field selector requires of the field at `path`, if it requires one.
    pub fn required_field(&self, path: &[&str]) -> Option<&str> {
        self.fields.required(path)
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// Lists matching objects at one revision, paging with `limit` and `continue`.
pub async fn list(api: &Api, target: &Target, query: &Query) -> Result<Value> {
    let resource = target.resource;
    let filter = Filter::from_query(query)?;
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "limit must be a non-negative integer",
            ));
        }
    };
    let (mut revision, mut after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, start) = decode_continue(token)?;
            (Some(rv), Some(start))
        }
        None => {
            let rv = query
                .get("resourceVersion")
                .filter(|rv| !rv.is_empty() && *rv != "0")
                .map(|rv| parse_revision(rv))
                .transpose()?;
            // Only `Exact` pins the read; by default (`NotOlderThan`) the latest state
            // satisfies any resource version the client has seen.
            let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            (rv.filter(|_| exact), None)
        }
    };
    let prefix = list_prefix(target);
    let mut items = Vec::new();
    let (continue_token, remaining) = loop {
        let want = limit.map(|l| l - items.len());
        let page = api
            .store
            .list(
                &prefix,
                &ListOptions {
                    limit: want,
                    continue_after: after.clone(),
                    revision,
                },
            )
            .await
            .map_err(|e| ApiError::storage(&e))?;
        revision = Some(page.revision);
        let last_key = page.items.last().map(|kv| kv.key.clone());
        for kv in &page.items {
            let object = present(resource, kv)?;
            if filter.matches(&object) {
                items.push(object);
            }
        }
        match (page.continue_after, limit) {
            (None, _) => break (None, None),
            (Some(_), Some(limit)) if items.len() >= limit => {
                let token = encode_continue(page.revision, &last_key.unwrap_or_default());
                // Exact only without selectors: with them the store cannot count matches.
                let remaining = (filter.labels.is_empty() && filter.fields.is_empty())
                    .then_some(page.remaining)
                    .flatten();
                break (Some(token), remaining);
            }
            (Some(next), _) => after = Some(next),
        }
    };
    let mut metadata = json!({ "resourceVersion": revision.unwrap_or_default().to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}
