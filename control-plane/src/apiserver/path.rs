//! Parsing Kubernetes API paths:
//! `/api/v1/namespaces/{ns}/{resource}/{name}/{subresource}` and
//! `/apis/{group}/{version}/…`, with the cluster-scoped and all-namespaces forms.

use super::{
    error::ApiError,
    resources::{ResourceType, Resources},
};

/// What a request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static ResourceType,
    /// Set for namespaced requests; `None` for cluster-scoped resources and all-namespace lists.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Splits an API path into its target. `Err` is a 404 naming the path.
pub fn parse(resources: &Resources, path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    let lookup = |plural: &str| {
        resources
            .get(group, version, plural)
            .ok_or_else(|| ApiError::no_route(path))
    };
    let owned = |s: &&str| (*s).to_owned();
    // `namespaces/{ns}/{resource}…` addresses a namespaced resource unless `{resource}` is one of
    // the namespace's own subresources (`namespaces/{name}/status`).
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(resource) = resources
            .get(group, version, plural)
            .filter(|r| r.namespaced)
    {
        return match tail {
            [] => Ok(Target {
                resource,
                namespace: Some(owned(ns)),
                name: None,
                subresource: None,
            }),
            [name] => Ok(Target {
                resource,
                namespace: Some(owned(ns)),
                name: Some(owned(name)),
                subresource: None,
            }),
            [name, sub] => Ok(Target {
                resource,
                namespace: Some(owned(ns)),
                name: Some(owned(name)),
                subresource: Some(owned(sub)),
            }),
            _ => Err(ApiError::no_route(path)),
        };
    }
    match rest {
        [plural] => Ok(Target {
            resource: lookup(plural)?,
            namespace: None,
            name: None,
            subresource: None,
        }),
        [plural, name] => {
            let resource = lookup(plural)?;
            if resource.namespaced {
                return Err(ApiError::no_route(path));
            }
            Ok(Target {
                resource,
                namespace: None,
                name: Some(owned(name)),
                subresource: None,
            })
        }
        [plural, name, sub] => {
            let resource = lookup(plural)?;
            if resource.namespaced {
                return Err(ApiError::no_route(path));
            }
            Ok(Target {
                resource,
                namespace: None,
                name: Some(owned(name)),
                subresource: Some(owned(sub)),
            })
        }
        _ => Err(ApiError::no_route(path)),
    }
}
