//! Which resource types the server has, and turning what a user types (`deploy`,
//! `deployments.apps`, `Service`) or what a manifest says (`apps/v1`, `Deployment`) into one.

use serde::Deserialize;
use serde_json::Value;

use crate::client::{self, Client};

/// A resource type the server serves, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    /// The plural, as in paths: `deployments`.
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    pub short_names: Vec<String>,
}

impl ApiResource {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `services` for the core group: how Kubernetes names a resource
    /// type in messages.
    pub fn qualified_plural(&self) -> String {
        qualify(&self.plural, &self.group)
    }

    /// `deployment.apps`, or `service`: how kubectl prints `KIND/NAME`.
    pub fn qualified_kind(&self) -> String {
        qualify(&self.kind.to_lowercase(), &self.group)
    }

    /// The path of the collection (`namespace` is ignored for cluster-scoped types, and `None`
    /// means all namespaces), or of one object.
    pub fn path(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut path = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if self.namespaced
            && let Some(namespace) = namespace
        {
            path.push_str("/namespaces/");
            path.push_str(namespace);
        }
        path.push('/');
        path.push_str(&self.plural);
        if let Some(name) = name {
            path.push('/');
            path.push_str(name);
        }
        path
    }
}

fn qualify(name: &str, group: &str) -> String {
    if group.is_empty() {
        name.to_owned()
    } else {
        format!("{name}.{group}")
    }
}

/// A type name the server does not know.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable: the name is wrong, or the server serves no such type.
    #[error("the server doesn't have a resource type {0:?}")]
    UnknownType(String),
    /// Not retryable.
    #[error("no matches for kind {kind:?} in version {api_version:?}")]
    UnknownKind { kind: String, api_version: String },
    #[error(transparent)]
    Client(#[from] client::Error),
    #[error("discovery document {path} is not valid")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every resource type of the server, the core group first, then the groups in the server's
/// order, each group's preferred version first: the order in which ambiguous names are
/// resolved, as kubectl does.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    resources: Vec<ApiResource>,
}

#[derive(Debug, Deserialize)]
struct ApiVersions {
    #[serde(default)]
    versions: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ApiGroupList {
    #[serde(default)]
    groups: Vec<ApiGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiGroup {
    name: String,
    #[serde(default)]
    versions: Vec<GroupVersion>,
    preferred_version: Option<GroupVersion>,
}

#[derive(Debug, Deserialize)]
struct GroupVersion {
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResourceList {
    #[serde(default)]
    resources: Vec<RawResource>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResource {
    name: String,
    #[serde(default)]
    singular_name: String,
    #[serde(default)]
    namespaced: bool,
    kind: String,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    short_names: Vec<String>,
}

impl Discovery {
    /// Asks the server: `/api`, `/apis`, then each group version's resource list.
    pub async fn load(client: &Client) -> Result<Self> {
        let core: ApiVersions = decode("/api", client.get("/api", &[]).await?)?;
        let groups: ApiGroupList = decode("/apis", client.get("/apis", &[]).await?)?;
        let mut versions: Vec<(String, String)> = core
            .versions
            .into_iter()
            .map(|v| (String::new(), v))
            .collect();
        for group in groups.groups {
            let preferred = group.preferred_version.map(|p| p.version);
            if let Some(preferred) = &preferred {
                versions.push((group.name.clone(), preferred.clone()));
            }
            for version in group.versions {
                if Some(&version.version) != preferred.as_ref() {
                    versions.push((group.name.clone(), version.version));
                }
            }
        }
        let lists = futures::future::join_all(versions.iter().map(|(group, version)| async move {
            let path = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let list = client.get(&path, &[]).await?;
            Ok::<_, Error>((group.clone(), version.clone(), decode(&path, list)?))
        }))
        .await;
        let mut discovery = Self::default();
        for list in lists {
            let (group, version, list) = list?;
            discovery.add(&group, &version, list);
        }
        Ok(discovery)
    }

    /// Builds from resource lists (`APIResourceList` JSON) in priority order.
    #[cfg(test)]
    pub fn from_lists(lists: &[(&str, &str, Value)]) -> Self {
        let mut discovery = Self::default();
        for (group, version, list) in lists {
            discovery.add(
                group,
                version,
                serde_json::from_value(list.clone()).unwrap(),
            );
        }
        discovery
    }

    fn add(&mut self, group: &str, version: &str, list: ApiResourceList) {
        for raw in list.resources {
            // Subresources (`deployments/scale`) are not types of their own.
            if raw.name.contains('/') {
                continue;
            }
            self.resources.push(ApiResource {
                group: group.to_owned(),
                version: version.to_owned(),
                singular: if raw.singular_name.is_empty() {
                    raw.kind.to_lowercase()
                } else {
                    raw.singular_name
                },
                plural: raw.name,
                kind: raw.kind,
                namespaced: raw.namespaced,
                verbs: raw.verbs,
                short_names: raw.short_names,
            });
        }
    }

    /// The type a user means by `name`: a plural, singular, kind or short name, any case,
    /// optionally followed by `.group` or `.version.group`.
    pub fn resolve(&self, name: &str) -> Result<&ApiResource> {
        let lower = name.to_lowercase();
        let (base, qualifier) = match lower.split_once('.') {
            Some((base, qualifier)) => (base, Some(qualifier)),
            None => (lower.as_str(), None),
        };
        let names_match = |r: &ApiResource| {
            r.plural == base
                || r.singular == base
                || r.kind.to_lowercase() == base
                || r.short_names.iter().any(|s| s.to_lowercase() == base)
        };
        let found = self.resources.iter().find(|r| {
            if !names_match(r) {
                return false;
            }
            match qualifier {
                None => true,
                Some(q) => {
                    q == r.group
                        || q.strip_prefix(&format!("{}.", r.version)) == Some(r.group.as_str())
                        || (r.group.starts_with(q) && r.group[q.len()..].starts_with('.'))
                        // `pods.v1`: the core group, by its version.
                        || (r.group.is_empty() && q == r.version)
                }
            }
        });
        found.ok_or_else(|| Error::UnknownType(name.to_owned()))
    }

    /// The type of objects with this `apiVersion` and `kind`.
    pub fn for_kind(&self, api_version: &str, kind: &str) -> Result<&ApiResource> {
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .ok_or_else(|| Error::UnknownKind {
                kind: kind.to_owned(),
                api_version: api_version.to_owned(),
            })
    }
}

/// Objects a user named on the command line: of one type, all of them or only `names`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target<'a> {
    pub resource: &'a ApiResource,
    /// Empty for "all".
    pub names: Vec<String>,
}

impl Discovery {
    /// What `TYPE[,TYPE…] [NAME…]` or `TYPE/NAME…` name.
    pub fn targets(&self, args: &[String]) -> Result<Vec<Target<'_>>, TargetError> {
        let Some(first) = args.first() else {
            return Err(TargetError::NoType);
        };
        if args.iter().any(|a| a.contains('/')) {
            let mut targets: Vec<Target<'_>> = Vec::new();
            for arg in args {
                let Some((kind, name)) = arg
                    .split_once('/')
                    .filter(|(k, n)| !k.is_empty() && !n.is_empty())
                else {
                    return Err(TargetError::Mixed(arg.clone()));
                };
                let resource = self.resolve(kind)?;
                match targets.last_mut() {
                    Some(last) if last.resource == resource => last.names.push(name.to_owned()),
                    _ => targets.push(Target {
                        resource,
                        names: vec![name.to_owned()],
                    }),
                }
            }
            return Ok(targets);
        }
        let names: Vec<String> = args[1..].to_vec();
        first
            .split(',')
            .filter(|k| !k.is_empty())
            .map(|kind| {
                Ok(Target {
                    resource: self.resolve(kind)?,
                    names: names.clone(),
                })
            })
            .collect()
    }
}

/// A command line that names no objects properly; not retryable.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("you must specify the type of resource to get")]
    NoType,
    #[error("arguments in resource/name form must have a single resource and name, not {0:?}")]
    Mixed(String),
    #[error(transparent)]
    Unknown(#[from] Error),
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| Error::Decode {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
pub mod tests {
    use serde_json::json;

    use super::*;

    /// A small server: core v1 and apps/v1, as the control plane describes them.
    pub fn canned() -> Discovery {
        Discovery::from_lists(&[
            (
                "",
                "v1",
                json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                     "verbs": ["get", "list"], "shortNames": ["po"]},
                    {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
                    {"name": "services", "singularName": "service", "namespaced": true, "kind": "Service",
                     "verbs": ["get"], "shortNames": ["svc"]},
                    {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
                     "verbs": ["get"], "shortNames": ["ns"]},
                    {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
                     "verbs": ["get"], "shortNames": ["ev"]},
                ]}),
            ),
            (
                "apps",
                "v1",
                json!({"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
                    {"name": "deployments", "singularName": "deployment", "namespaced": true,
                     "kind": "Deployment", "verbs": ["get"], "shortNames": ["deploy"]},
                    {"name": "deployments/scale", "singularName": "", "namespaced": true, "kind": "Scale", "verbs": ["get"]},
                ]}),
            ),
            (
                "networking.k8s.io",
                "v1",
                json!({"kind": "APIResourceList", "groupVersion": "networking.k8s.io/v1", "resources": [
                    {"name": "networkpolicies", "singularName": "networkpolicy", "namespaced": true,
                     "kind": "NetworkPolicy", "verbs": ["get"], "shortNames": ["netpol"]},
                ]}),
            ),
            (
                "events.k8s.io",
                "v1",
                json!({"kind": "APIResourceList", "groupVersion": "events.k8s.io/v1", "resources": [
                    {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
                     "verbs": ["get"], "shortNames": ["ev"]},
                ]}),
            ),
        ])
    }

    #[test]
    fn names_resolve_by_plural_singular_kind_and_short_name() {
        let d = canned();
        for name in [
            "deployments",
            "deployment",
            "Deployment",
            "deploy",
            "DEPLOY",
        ] {
            let r = d.resolve(name).unwrap();
            assert_eq!(
                (r.group.as_str(), r.plural.as_str()),
                ("apps", "deployments")
            );
        }
        assert_eq!(d.resolve("svc").unwrap().kind, "Service");
        assert!(!d.resolve("ns").unwrap().namespaced);
    }

    #[test]
    fn a_group_suffix_picks_the_group() {
        let d = canned();
        assert_eq!(d.resolve("deployments.apps").unwrap().plural, "deployments");
        assert_eq!(
            d.resolve("deployments.v1.apps").unwrap().plural,
            "deployments"
        );
        assert_eq!(d.resolve("events").unwrap().group, "", "core first");
        assert_eq!(
            d.resolve("events.events.k8s.io").unwrap().group,
            "events.k8s.io"
        );
        assert_eq!(
            d.resolve("networkpolicies.networking").unwrap().kind,
            "NetworkPolicy"
        );
        assert!(matches!(
            d.resolve("deployments.batch"),
            Err(Error::UnknownType(_))
        ));
    }

    #[test]
    fn subresources_and_unknown_names_do_not_resolve() {
        let d = canned();
        assert!(d.resolve("scale").is_err());
        assert!(d.resolve("pods/status").is_err());
        let e = d.resolve("widgets").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server doesn't have a resource type \"widgets\""
        );
    }

    #[test]
    fn manifests_resolve_by_api_version_and_kind() {
        let d = canned();
        let r = d.for_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(
            r.path(Some("default"), Some("web")),
            "/apis/apps/v1/namespaces/default/deployments/web"
        );
        let ns = d.for_kind("v1", "Namespace").unwrap();
        assert_eq!(ns.path(Some("default"), Some("x")), "/api/v1/namespaces/x");
        assert_eq!(r.qualified_kind(), "deployment.apps");
        assert_eq!(
            d.for_kind("v1", "Service").unwrap().qualified_kind(),
            "service"
        );
        assert!(d.for_kind("apps/v2", "Deployment").is_err());
    }

    #[test]
    fn command_lines_name_types_and_objects() {
        let d = canned();
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let t = d.targets(&args(&["deploy", "a", "b"])).unwrap();
        assert_eq!(
            (t.len(), t[0].resource.plural.as_str(), t[0].names.clone()),
            (1, "deployments", args(&["a", "b"]))
        );
        let t = d.targets(&args(&["deploy,svc"])).unwrap();
        assert_eq!(
            t.iter()
                .map(|t| t.resource.kind.as_str())
                .collect::<Vec<_>>(),
            ["Deployment", "Service"]
        );
        let t = d
            .targets(&args(&["deploy/a", "deployment/b", "svc/c"]))
            .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].names, args(&["a", "b"]));
        assert_eq!(t[1].names, args(&["c"]));
        assert!(matches!(
            d.targets(&args(&["deploy/a", "b"])),
            Err(TargetError::Mixed(_))
        ));
        assert!(matches!(
            d.targets(&args(&["gizmo"])),
            Err(TargetError::Unknown(_))
        ));
    }
}
