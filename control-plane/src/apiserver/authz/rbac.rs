//! RBAC evaluation (`plugin/pkg/auth/authorizer/rbac`): rules matching request attributes, an
//! index of bindings by subject fed by watches, and the coverage check of escalation prevention
//! (`pkg/registry/rbac/validation`).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, RwLock},
};

use apiary_api::rbac_v1::{PolicyRule, RoleRef, Subject};
use serde_json::Value;

use super::request_info::RequestInfo;
use crate::apiserver::auth::UserInfo;

/// The group Kubernetes' API server lets do anything, before RBAC is asked.
pub const PRIVILEGED_GROUP: &str = "system:masters";

fn has(items: &[String], item: &str) -> bool {
    items.iter().any(|i| i == "*" || i == item)
}

/// Whether `rule` allows the request (`RuleAllows`).
pub fn rule_allows(info: &RequestInfo, rule: &PolicyRule) -> bool {
    if info.is_resource_request {
        let combined = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        has(&rule.verbs, &info.verb)
            && has(&rule.api_groups, &info.api_group)
            && resource_matches(rule, &combined, &info.subresource)
            && (rule.resource_names.is_empty() || rule.resource_names.contains(&info.name))
    } else {
        has(&rule.verbs, &info.verb) && non_resource_url_matches(rule, &info.path)
    }
}

fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        r == "*"
            || r == combined
            // `*/scale` is every resource's scale subresource.
            || (!subresource.is_empty() && r.len() == subresource.len() + 2 && r.starts_with("*/") && &r[2..] == subresource)
            // `pods/*` is every subresource of pods (not pods itself).
            || r.strip_suffix("/*").is_some_and(|prefix| {
                combined.starts_with(prefix) && combined[prefix.len()..].starts_with('/')
            })
    })
}

fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls.iter().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Who a binding subject is, as the index keys it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SubjectKey {
    /// Users, and service accounts as their user names
    /// (`system:serviceaccount:{namespace}:{name}`).
    User(String),
    Group(String),
}

fn subject_key(subject: &Subject, binding_namespace: &str) -> Option<SubjectKey> {
    match subject.kind.as_str() {
        "User" => Some(SubjectKey::User(subject.name.clone())),
        "Group" => Some(SubjectKey::Group(subject.name.clone())),
        "ServiceAccount" => {
            let ns = if subject.namespace.is_empty() {
                binding_namespace
            } else {
                &subject.namespace
            };
            Some(SubjectKey::User(format!(
                "system:serviceaccount:{ns}:{}",
                subject.name
            )))
        }
        _ => None,
    }
}

/// A binding as the index holds it.
#[derive(Clone, Debug)]
struct Binding {
    role_ref: RoleRef,
    keys: Vec<SubjectKey>,
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
type Key = (String, String);

#[derive(Debug, Default)]
struct Index {
    roles: HashMap<Key, Arc<Vec<PolicyRule>>>,
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    /// ClusterRoleBindings (namespace empty) and RoleBindings.
    bindings: HashMap<Key, Binding>,
    /// Bindings by (namespace of the binding, subject).
    by_subject: HashMap<(String, SubjectKey), HashSet<String>>,
}

impl Index {
    fn unbind(&mut self, key: &Key) {
        if let Some(old) = self.bindings.remove(key) {
            for s in old.keys {
                let k = (key.0.clone(), s);
                if let Some(set) = self.by_subject.get_mut(&k) {
                    set.remove(&key.1);
                    if set.is_empty() {
                        self.by_subject.remove(&k);
                    }
                }
            }
        }
    }

    fn bind(&mut self, key: Key, role_ref: RoleRef, subjects: Vec<Subject>) {
        self.unbind(&key);
        let keys: Vec<SubjectKey> = subjects
            .iter()
            .filter_map(|s| subject_key(s, &key.0))
            .collect();
        for s in &keys {
            self.by_subject
                .entry((key.0.clone(), s.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        self.bindings.insert(key, Binding { role_ref, keys });
    }
}

/// The RBAC kinds the index follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

/// Why a request is allowed (`RBAC: allowed by …`), or the errors met on the way to no.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    /// No rule allows it; the reason lists roles bindings refer to that do not exist.
    NoOpinion(String),
}

/// RBAC over a watch-fed index: evaluating a request costs the bindings of its user and groups,
/// not the bindings of the cluster.
#[derive(Debug, Default)]
pub struct Rbac {
    index: RwLock<Index>,
}

fn rules_of(object: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(object["rules"].clone()).unwrap_or_default()
}

impl Rbac {
    /// Records an added or modified object of `kind`.
    pub fn apply(&self, kind: Kind, object: &Value) {
        let meta = &object["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let mut index = self.index.write().expect("rbac index lock");
        match kind {
            Kind::Role => {
                index.roles.insert((ns, name), Arc::new(rules_of(object)));
            }
            Kind::ClusterRole => {
                index.cluster_roles.insert(name, Arc::new(rules_of(object)));
            }
            Kind::RoleBinding | Kind::ClusterRoleBinding => {
                let ns = if kind == Kind::ClusterRoleBinding {
                    String::new()
                } else {
                    ns
                };
                let role_ref =
                    serde_json::from_value(object["roleRef"].clone()).unwrap_or_default();
                let subjects =
                    serde_json::from_value(object["subjects"].clone()).unwrap_or_default();
                index.bind((ns, name), role_ref, subjects);
            }
        }
    }

    /// Forgets a deleted object of `kind`.
    pub fn remove(&self, kind: Kind, object: &Value) {
        let meta = &object["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let mut index = self.index.write().expect("rbac index lock");
        match kind {
            Kind::Role => {
                index.roles.remove(&(ns, name));
            }
            Kind::ClusterRole => {
                index.cluster_roles.remove(&name);
            }
            Kind::RoleBinding => index.unbind(&(ns, name)),
            Kind::ClusterRoleBinding => index.unbind(&(String::new(), name)),
        }
    }

    /// Replaces everything of `kind` (a relist).
    pub fn replace(&self, kind: Kind, objects: &[Arc<Value>]) {
        {
            let mut index = self.index.write().expect("rbac index lock");
            match kind {
                Kind::Role => index.roles.clear(),
                Kind::ClusterRole => index.cluster_roles.clear(),
                Kind::RoleBinding | Kind::ClusterRoleBinding => {
                    let cluster = kind == Kind::ClusterRoleBinding;
                    let keys: Vec<Key> = index
                        .bindings
                        .keys()
                        .filter(|(ns, _)| ns.is_empty() == cluster)
                        .cloned()
                        .collect();
                    for k in keys {
                        index.unbind(&k);
                    }
                }
            }
        }
        for o in objects {
            self.apply(kind, o);
        }
    }

    /// Visits the rules that apply to `user` in `namespace` (empty: cluster scope), with a
    /// description of where each came from, until `visit` returns `true`. Returns the errors
    /// met (bindings to roles that do not exist).
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&str, &PolicyRule) -> bool,
    ) -> Vec<String> {
        let index = self.index.read().expect("rbac index lock");
        let mut subjects = vec![SubjectKey::User(user.name.clone())];
        subjects.extend(user.groups.iter().map(|g| SubjectKey::Group(g.clone())));
        let mut errors = Vec::new();
        let scopes: &[&str] = if namespace.is_empty() {
            &[""]
        } else {
            &["", namespace]
        };
        for scope in scopes {
            // Sorted, so that answers (and their reasons) do not depend on hash order.
            let mut names: BTreeSet<(&String, &SubjectKey)> = BTreeSet::new();
            for s in &subjects {
                if let Some(set) = index.by_subject.get(&((*scope).to_owned(), s.clone())) {
                    names.extend(set.iter().map(|n| (n, s)));
                }
            }
            let mut seen = HashSet::new();
            for (name, subject) in names {
                if !seen.insert(name) {
                    continue;
                }
                let Some(binding) = index.bindings.get(&((*scope).to_owned(), name.clone())) else {
                    continue;
                };
                let r = &binding.role_ref;
                let rules = match r.kind.as_str() {
                    "ClusterRole" => index.cluster_roles.get(&r.name),
                    _ => index.roles.get(&((*scope).to_owned(), r.name.clone())),
                };
                let Some(rules) = rules else {
                    errors.push(if r.kind == "ClusterRole" {
                        format!(
                            "clusterrole.rbac.authorization.k8s.io {:?} not found",
                            r.name
                        )
                    } else {
                        format!("role.rbac.authorization.k8s.io {:?} not found", r.name)
                    });
                    continue;
                };
                let (kind, ns) = if scope.is_empty() {
                    ("ClusterRoleBinding", String::new())
                } else {
                    ("RoleBinding", format!(" of {scope:?}"))
                };
                let subject = match subject {
                    SubjectKey::User(u) => match u.strip_prefix("system:serviceaccount:") {
                        Some(sa) => {
                            let (sa_ns, sa_name) = sa.split_once(':').unwrap_or(("", sa));
                            format!("ServiceAccount \"{sa_name}\" in namespace \"{sa_ns}\"")
                        }
                        None => format!("User {u:?}"),
                    },
                    SubjectKey::Group(g) => format!("Group {g:?}"),
                };
                let source = format!(
                    "{kind} {name:?}{ns} of {} {:?} to {subject}",
                    r.kind, r.name
                );
                for rule in rules.iter() {
                    if visit(&source, rule) {
                        return errors;
                    }
                }
            }
        }
        errors
    }

    /// RBAC's decision on a request of `user`.
    pub fn authorize(&self, user: &UserInfo, info: &RequestInfo) -> Decision {
        let mut allowed = None;
        let errors = self.visit(user, &info.namespace, |source, rule| {
            if rule_allows(info, rule) {
                allowed = Some(source.to_owned());
                true
            } else {
                false
            }
        });
        match allowed {
            Some(source) => Decision::Allow(format!("RBAC: allowed by {source}")),
            None if errors.is_empty() => Decision::NoOpinion(String::new()),
            None => Decision::NoOpinion(format!("RBAC: [{}]", errors.join(", "))),
        }
    }

    /// Every rule that applies to `user` in `namespace` (`RulesFor`), and the errors met.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let errors = self.visit(user, namespace, |_, rule| {
            rules.push(rule.clone());
            false
        });
        (rules, errors)
    }

    /// The rules of the role `role_ref` of a binding in `namespace`, or `None` when the role
    /// does not exist.
    pub fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Option<Vec<PolicyRule>> {
        let index = self.index.read().expect("rbac index lock");
        match role_ref.kind.as_str() {
            "ClusterRole" => index.cluster_roles.get(&role_ref.name).map(|r| r.to_vec()),
            _ => index
                .roles
                .get(&(namespace.to_owned(), role_ref.name.clone()))
                .map(|r| r.to_vec()),
        }
    }

    /// How many bindings the index holds.
    pub fn binding_count(&self) -> usize {
        self.index.read().expect("rbac index lock").bindings.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Escalation prevention

/// One verb on one resource (or URL): the unit of coverage (`BreakdownRule`).
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    let one = |s: &String| vec![s.clone()];
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    });
                } else {
                    for name in &rule.resource_names {
                        out.push(PolicyRule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            resource_names: one(name),
                            ..PolicyRule::default()
                        });
                    }
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
    }
    out
}

fn covers_resource(owner: &[String], requested: &str) -> bool {
    owner.iter().any(|o| {
        o == "*"
            || o == requested
            || o.strip_suffix("/*")
                .is_some_and(|p| requested.starts_with(p) && requested[p.len()..].starts_with('/'))
            || o.strip_prefix("*/")
                .is_some_and(|sub| requested.split_once('/').is_some_and(|(_, s)| s == sub))
    })
}

/// Whether `owner` grants everything `sub` (one broken-down rule) does (`ruleCovers`).
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let all = |have: &[String], want: &[String]| want.iter().all(|w| has(have, w));
    all(&owner.verbs, &sub.verbs)
        && all(&owner.api_groups, &sub.api_groups)
        && sub
            .resources
            .iter()
            .all(|r| covers_resource(&owner.resources, r))
        && sub.non_resource_urls.iter().all(|u| {
            owner.non_resource_urls.iter().any(|o| {
                o == "*" || o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p))
            })
        })
        && (owner.resource_names.is_empty()
            || (!sub.resource_names.is_empty()
                && sub
                    .resource_names
                    .iter()
                    .all(|n| owner.resource_names.contains(n))))
}

/// The parts of `requested` that `owner` does not cover, compacted as Kubernetes prints them.
pub fn uncovered(owner: &[PolicyRule], requested: &[PolicyRule]) -> Vec<PolicyRule> {
    let missing: Vec<PolicyRule> = requested
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owner.iter().any(|o| rule_covers(o, sub)))
        .collect();
    compact(missing)
}

/// Merges the verbs of simple rules on the same resource (`CompactRules`).
fn compact(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    for rule in rules {
        let simple = rule.non_resource_urls.is_empty()
            && rule.api_groups.len() == 1
            && rule.resources.len() == 1
            && rule.resource_names.len() <= 1;
        if simple
            && let Some(existing) = out.iter_mut().find(|e| {
                e.non_resource_urls.is_empty()
                    && e.api_groups == rule.api_groups
                    && e.resources == rule.resources
                    && e.resource_names == rule.resource_names
            })
        {
            for v in rule.verbs {
                if !existing.verbs.contains(&v) {
                    existing.verbs.push(v);
                }
            }
            continue;
        }
        out.push(rule);
    }
    out
}

/// `CompactString`: `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get" "list"]}`.
pub fn compact_string(rule: &PolicyRule) -> String {
    let q = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", items.join(" "))
    };
    let mut parts = Vec::new();
    for (label, values) in [
        ("APIGroups", &rule.api_groups),
        ("Resources", &rule.resources),
        ("NonResourceURLs", &rule.non_resource_urls),
        ("ResourceNames", &rule.resource_names),
        ("Verbs", &rule.verbs),
    ] {
        if !values.is_empty() {
            parts.push(format!("{label}:{}", q(values)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::authz::request_info::parse;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule::resources(verbs, groups, resources)
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let list_pods = parse("GET", "/api/v1/namespaces/ns/pods", None, false);
        assert!(rule_allows(&list_pods, &rule(&["list"], &[""], &["pods"])));
        assert!(rule_allows(&list_pods, &rule(&["*"], &["*"], &["*"])));
        assert!(!rule_allows(&list_pods, &rule(&["get"], &[""], &["pods"])));
        assert!(!rule_allows(
            &list_pods,
            &rule(&["list"], &["apps"], &["pods"])
        ));
        let exec = parse("POST", "/api/v1/namespaces/ns/pods/web/exec", None, false);
        assert!(!rule_allows(&exec, &rule(&["create"], &[""], &["pods"])));
        assert!(rule_allows(
            &exec,
            &rule(&["create"], &[""], &["pods/exec"])
        ));
        assert!(rule_allows(&exec, &rule(&["create"], &[""], &["pods/*"])));
        assert!(!rule_allows(
            &list_pods,
            &rule(&["list"], &[""], &["pods/*"])
        ));
        let scale = parse(
            "PUT",
            "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            None,
            false,
        );
        assert!(rule_allows(
            &scale,
            &rule(&["update"], &["apps"], &["*/scale"])
        ));
        assert!(!rule_allows(
            &scale,
            &rule(&["update"], &["apps"], &["*/status"])
        ));
        let get = parse("GET", "/api/v1/namespaces/ns/secrets/a", None, false);
        let mut named = rule(&["get"], &[""], &["secrets"]);
        named.resource_names = vec!["a".into()];
        assert!(rule_allows(&get, &named));
        let get_b = parse("GET", "/api/v1/namespaces/ns/secrets/b", None, false);
        assert!(!rule_allows(&get_b, &named));
        assert!(!rule_allows(
            &parse("GET", "/api/v1/namespaces/ns/secrets", None, false),
            &named
        ));
        let health = parse("GET", "/healthz/etcd", None, false);
        assert!(rule_allows(
            &health,
            &PolicyRule::urls(&["get"], &["/healthz/*"])
        ));
        assert!(!rule_allows(
            &health,
            &PolicyRule::urls(&["get"], &["/healthz"])
        ));
        assert!(rule_allows(&health, &PolicyRule::urls(&["*"], &["*"])));
        assert!(!rule_allows(&health, &rule(&["*"], &["*"], &["*"])));
    }

    fn binding(kind: &str, ns: &str, name: &str, role: (&str, &str), subjects: Value) -> Value {
        serde_json::json!({"kind": kind, "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role.0, "name": role.1},
            "subjects": subjects})
    }

    #[test]
    fn bindings_grant_in_their_scope() {
        let rbac = Rbac::default();
        rbac.apply(
            Kind::ClusterRole,
            &serde_json::json!({"metadata": {"name": "view"},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        rbac.apply(
            Kind::RoleBinding,
            &binding(
                "RoleBinding",
                "dev",
                "alice-view",
                ("ClusterRole", "view"),
                serde_json::json!([{"kind": "User", "name": "alice"}]),
            ),
        );
        let alice = UserInfo {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        };
        let in_dev = parse("GET", "/api/v1/namespaces/dev/pods", None, false);
        assert_eq!(
            rbac.authorize(&alice, &in_dev),
            Decision::Allow(r#"RBAC: allowed by RoleBinding "alice-view" of "dev" of ClusterRole "view" to User "alice""#.into())
        );
        let in_prod = parse("GET", "/api/v1/namespaces/prod/pods", None, false);
        assert_eq!(
            rbac.authorize(&alice, &in_prod),
            Decision::NoOpinion(String::new())
        );
        let everywhere = parse("GET", "/api/v1/pods", None, false);
        assert_eq!(
            rbac.authorize(&alice, &everywhere),
            Decision::NoOpinion(String::new())
        );
        // A group binding at the cluster scope, to a role that does not exist yet.
        rbac.apply(
            Kind::ClusterRoleBinding,
            &binding(
                "ClusterRoleBinding",
                "",
                "all",
                ("ClusterRole", "missing"),
                serde_json::json!([{"kind": "Group", "name": "system:authenticated"}]),
            ),
        );
        assert_eq!(
            rbac.authorize(&alice, &everywhere),
            Decision::NoOpinion(
                r#"RBAC: [clusterrole.rbac.authorization.k8s.io "missing" not found]"#.into()
            )
        );
        rbac.apply(
            Kind::ClusterRole,
            &serde_json::json!({"metadata": {"name": "missing"},
            "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        assert!(matches!(
            rbac.authorize(&alice, &everywhere),
            Decision::Allow(_)
        ));
        rbac.remove(
            Kind::ClusterRoleBinding,
            &binding(
                "ClusterRoleBinding",
                "",
                "all",
                ("ClusterRole", "missing"),
                Value::Null,
            ),
        );
        assert_eq!(
            rbac.authorize(&alice, &everywhere),
            Decision::NoOpinion(String::new())
        );
        // Service accounts are users named after them; the namespace defaults to the binding's.
        rbac.apply(
            Kind::RoleBinding,
            &binding(
                "RoleBinding",
                "dev",
                "sa",
                ("ClusterRole", "view"),
                serde_json::json!([{"kind": "ServiceAccount", "name": "builder"}]),
            ),
        );
        let sa = UserInfo {
            name: "system:serviceaccount:dev:builder".into(),
            ..UserInfo::default()
        };
        assert!(matches!(rbac.authorize(&sa, &in_dev), Decision::Allow(_)));
    }

    #[test]
    fn ten_thousand_bindings_cost_only_the_users_own() {
        let rbac = Rbac::default();
        rbac.apply(
            Kind::ClusterRole,
            &serde_json::json!({"metadata": {"name": "view"},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        let objects: Vec<Arc<Value>> = (0..10_000)
            .map(|i| {
                Arc::new(binding(
                    "RoleBinding",
                    &format!("ns{}", i % 100),
                    &format!("b{i}"),
                    ("ClusterRole", "view"),
                    serde_json::json!([{"kind": "User", "name": format!("user{i}")}]),
                ))
            })
            .collect();
        rbac.replace(Kind::RoleBinding, &objects);
        assert_eq!(rbac.binding_count(), 10_000);
        let user = UserInfo {
            name: "user4242".into(),
            ..UserInfo::default()
        };
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            let info = parse("GET", "/api/v1/namespaces/ns42/pods/x", None, false);
            assert!(matches!(rbac.authorize(&user, &info), Decision::Allow(_)));
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn coverage_and_its_message() {
        let owner = vec![
            rule(&["get", "list", "watch"], &[""], &["pods", "pods/log"]),
            rule(&["*"], &["apps"], &["*"]),
        ];
        assert!(
            uncovered(
                &owner,
                &[
                    rule(&["get"], &[""], &["pods"]),
                    rule(&["delete"], &["apps"], &["deployments/scale"])
                ]
            )
            .is_empty()
        );
        let missing = uncovered(
            &owner,
            &[rule(
                &["get", "create", "delete"],
                &[""],
                &["pods", "secrets"],
            )],
        );
        let msgs: Vec<String> = missing.iter().map(compact_string).collect();
        assert_eq!(
            msgs,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["create" "delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "create" "delete"]}"#,
            ]
        );
        let admin = vec![
            rule(&["*"], &["*"], &["*"]),
            PolicyRule::urls(&["*"], &["*"]),
        ];
        assert!(uncovered(&admin, &admin).is_empty());
        assert_eq!(
            uncovered(&owner, &admin)
                .iter()
                .map(compact_string)
                .collect::<Vec<_>>(),
            [
                r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#,
                r#"{NonResourceURLs:["*"], Verbs:["*"]}"#
            ]
        );
    }
}
