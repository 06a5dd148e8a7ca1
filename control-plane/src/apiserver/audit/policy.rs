//! The audit policy (`audit.k8s.io/v1` `Policy`, kube-apiserver's `--audit-policy-file`): an
//! ordered list of rules; the first rule that matches a request decides how much of it is
//! recorded, and which stages are left out. A request no rule matches is not recorded.

use serde::Deserialize;

use crate::apiserver::{auth::UserInfo, authz::request_info::RequestInfo};

/// How much of a request an event holds, least first.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    /// User, verb, object reference, response code and timestamps.
    Metadata,
    /// Metadata and the request's object.
    Request,
    /// Metadata, the request's object and the response's.
    RequestResponse,
}

/// When an event is written.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
pub enum Stage {
    /// As soon as the request is authenticated, before it is handled.
    RequestReceived,
    /// Once the headers of a long-running response (watch, exec, logs) are sent.
    ResponseStarted,
    /// Once the response is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

/// A parsed policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted as in any Kubernetes object
    metadata: serde_json::Value,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    omit_managed_fields: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Decision {
    pub fn records(&self, stage: Stage) -> bool {
        self.level > Level::None && !self.omit_stages.contains(&stage)
    }
}

impl Policy {
    /// Parses and validates a policy file's contents (YAML or JSON), as kube-apiserver does at
    /// start: a bad policy is an error naming the rule, never a silently empty audit log.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Policy = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if policy.api_version != "audit.k8s.io/v1" || policy.kind != "Policy" {
            return Err(format!(
                "expected apiVersion audit.k8s.io/v1 and kind Policy, got {:?} {:?}",
                policy.api_version, policy.kind
            ));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            rule.validate().map_err(|e| format!("rules[{i}]: {e}"))?;
        }
        Ok(policy)
    }

    /// The policy `apiary` uses when only a log path is given: everything at `Metadata`, without
    /// the `RequestReceived` stage (one line per request).
    pub fn metadata_only() -> Self {
        Self {
            api_version: "audit.k8s.io/v1".to_owned(),
            kind: "Policy".to_owned(),
            metadata: serde_json::Value::Null,
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
                omit_stages: Vec::new(),
                omit_managed_fields: None,
            }],
            omit_stages: vec![Stage::RequestReceived],
            omit_managed_fields: false,
        }
    }

    /// The first matching rule's decision for `info` by `user` (`None` before authentication
    /// succeeded: rules naming users or groups do not match).
    pub fn decide(&self, user: Option<&UserInfo>, info: &RequestInfo) -> Decision {
        match self.rules.iter().find(|r| r.matches(user, info)) {
            Some(rule) => {
                let mut omit_stages = self.omit_stages.clone();
                omit_stages.extend(rule.omit_stages.iter().copied());
                Decision {
                    level: rule.level,
                    omit_stages,
                    omit_managed_fields: rule
                        .omit_managed_fields
                        .unwrap_or(self.omit_managed_fields),
                }
            }
            None => Decision {
                level: Level::None,
                omit_stages: Vec::new(),
                omit_managed_fields: false,
            },
        }
    }
}

impl Rule {
    fn validate(&self) -> Result<(), String> {
        if !self.non_resource_urls.is_empty()
            && (!self.resources.is_empty() || !self.namespaces.is_empty())
        {
            return Err(
                "rules cannot apply to both regular resources and non-resource URLs".into(),
            );
        }
        for url in &self.non_resource_urls {
            let star = url.find('*');
            if url != "*" && !url.starts_with('/') {
                return Err(format!("nonResourceURLs: {url:?}: must start with \"/\""));
            }
            if star.is_some_and(|i| i != url.len() - 1) {
                return Err(format!(
                    "nonResourceURLs: {url:?}: a \"*\" may only end the path"
                ));
            }
        }
        for group in &self.resources {
            for resource in &group.resources {
                if !group.resource_names.is_empty() && resource.contains('*') {
                    return Err(format!(
                        "resources: {resource:?}: resourceNames cannot go with a wildcard"
                    ));
                }
            }
        }
        Ok(())
    }

    fn matches(&self, user: Option<&UserInfo>, info: &RequestInfo) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.name)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&info.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(info);
        }
        if !self.non_resource_urls.is_empty() {
            return !info.is_resource_request
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(&info.path, spec));
        }
        true
    }

    fn matches_resource(&self, info: &RequestInfo) -> bool {
        if !info.is_resource_request {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&info.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        self.resources
            .iter()
            .filter(|g| g.group == info.api_group)
            .any(|g| {
                if g.resources.is_empty() {
                    return true;
                }
                if !g.resource_names.is_empty() && !g.resource_names.contains(&info.name) {
                    return false;
                }
                g.resources.iter().any(|r| {
                    r == "*"
                        || *r == combined
                        // `*/scale`: that subresource of any resource.
                        || (!info.subresource.is_empty()
                            && r.strip_prefix("*/") == Some(info.subresource.as_str()))
                        // `pods/*`: the resource and all its subresources.
                        || r.strip_suffix("/*") == Some(info.resource.as_str())
                })
            })
    }
}

/// A non-resource URL rule: `*`, an exact path, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::authz::request_info;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
- level: None
  nonResourceURLs: ["/healthz*", "/version"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps"]
- level: Request
  verbs: ["create"]
  userGroups: ["dev"]
  omitStages: [ResponseStarted]
- level: RequestResponse
  resources:
  - group: apps
    resources: ["*/scale"]
  - group: ""
    resources: ["pods/*"]
    resourceNames: []
- level: Metadata
  namespaces: ["kube-system"]
"#;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        }
    }

    fn level(policy: &Policy, who: Option<&UserInfo>, method: &str, path: &str) -> Level {
        let info = request_info::parse(method, path, None, false);
        policy.decide(who, &info).level
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = Policy::parse(POLICY).unwrap();
        let jane = user("jane", &["dev", "system:authenticated"]);
        let proxy = user("system:kube-proxy", &[]);
        // Users: the kube-proxy rule comes first, whatever it asks.
        assert_eq!(
            level(&policy, Some(&proxy), "GET", "/api/v1/namespaces/a/secrets"),
            Level::None
        );
        assert_eq!(
            level(&policy, Some(&jane), "GET", "/api/v1/namespaces/a/secrets"),
            Level::Metadata
        );
        // Non-resource URLs, by prefix.
        assert_eq!(
            level(&policy, Some(&jane), "GET", "/healthz/ready"),
            Level::None
        );
        assert_eq!(level(&policy, Some(&jane), "GET", "/version"), Level::None);
        // Groups and verbs.
        assert_eq!(
            level(&policy, Some(&jane), "POST", "/api/v1/namespaces/a/pods"),
            Level::Request
        );
        let other = user("joe", &["ops"]);
        assert_eq!(
            level(
                &policy,
                Some(&other),
                "POST",
                "/api/v1/namespaces/a/services"
            ),
            Level::None
        );
        // Before authentication, group rules never match.
        assert_eq!(
            level(&policy, None, "POST", "/api/v1/namespaces/a/services"),
            Level::None
        );
        // `*/scale` and `pods/*`.
        assert_eq!(
            level(
                &policy,
                Some(&other),
                "GET",
                "/apis/apps/v1/namespaces/a/deployments/web/scale"
            ),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                &policy,
                Some(&other),
                "GET",
                "/apis/apps/v1/namespaces/a/deployments/web"
            ),
            Level::None
        );
        assert_eq!(
            level(
                &policy,
                Some(&other),
                "GET",
                "/api/v1/namespaces/a/pods/p/log"
            ),
            Level::RequestResponse
        );
        assert_eq!(
            level(&policy, Some(&other), "GET", "/api/v1/namespaces/a/pods"),
            Level::RequestResponse
        );
        // Namespaces.
        assert_eq!(
            level(
                &policy,
                Some(&other),
                "GET",
                "/apis/apps/v1/namespaces/kube-system/deployments"
            ),
            Level::Metadata
        );
    }

    #[test]
    fn stages_are_the_policys_and_the_rules() {
        let policy = Policy::parse(POLICY).unwrap();
        let jane = user("jane", &["dev"]);
        let info = request_info::parse("POST", "/api/v1/namespaces/a/pods", None, false);
        let decision = policy.decide(Some(&jane), &info);
        assert!(!decision.records(Stage::RequestReceived));
        assert!(!decision.records(Stage::ResponseStarted));
        assert!(decision.records(Stage::ResponseComplete));
    }

    #[test]
    fn resource_names_narrow_a_rule() {
        let policy = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Request\n  resources:\n  - resources: [configmaps]\n    resourceNames: [cfg]\n",
        )
        .unwrap();
        let u = user("u", &[]);
        assert_eq!(
            level(
                &policy,
                Some(&u),
                "GET",
                "/api/v1/namespaces/a/configmaps/cfg"
            ),
            Level::Request
        );
        assert_eq!(
            level(
                &policy,
                Some(&u),
                "GET",
                "/api/v1/namespaces/a/configmaps/other"
            ),
            Level::None
        );
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let refused = |text: &str| Policy::parse(text).unwrap_err();
        assert!(refused("apiVersion: v1\nkind: Policy\n").contains("audit.k8s.io/v1"));
        assert!(
            refused("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n")
                .contains("Loud")
        );
        assert!(
            refused(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  user: [x]\n"
            )
            .contains("user")
        );
        assert!(
            refused("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [\"/a\"]\n  namespaces: [b]\n")
                .starts_with("rules[0]")
        );
        assert!(refused("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [\"/a*b\"]\n").contains("may only end"));
    }
}
