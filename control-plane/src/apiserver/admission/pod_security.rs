//! Pod Security admission (Kubernetes 1.25+): the `pod-security.kubernetes.io/<mode>` labels of
//! a namespace pick a level (`privileged`, `baseline`, `restricted`) per mode; `enforce` refuses
//! pods that violate it (403, with every violated check and what to change), `warn` answers with
//! a `Warning` header, and `audit` adds an annotation to the audit event. Workload resources
//! (their pod templates) are only warned and audited, never refused, as in Kubernetes.
//!
//! The checks are Kubernetes' Pod Security Standards (`k8s.io/pod-security-admission/policy`),
//! evaluated on the pod's JSON so that fields Apiary's typed structs leave out (SELinux, AppArmor,
//! Windows options) are judged too.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::apiserver::{
    Api, audit, authz::forbidden_on, error::ApiError, objects::Result, resources::ResourceType,
    warnings,
};

/// Where the pod template of a workload kind is, for warnings (workloads are never refused).
fn template_path(resource: &ResourceType) -> Option<&'static [&'static str]> {
    match (resource.group, resource.plural) {
        ("", "podtemplates") => Some(&["template"]),
        ("", "replicationcontrollers")
        | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => Some(&["spec", "template"]),
        ("batch", "cronjobs") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Pod Security admission of a created or updated `object` of `resource`: namespaces' labels
/// are checked; pods are judged by their namespace's policies (refused under `enforce`);
/// workloads' pod templates are warned and audited only. `namespace` is the object's namespace
/// if the caller has it (it is read otherwise).
pub async fn admit(
    api: &Api,
    resource: &ResourceType,
    object: &Value,
    namespace: Option<&Value>,
) -> Result<()> {
    if resource.group.is_empty() && resource.plural == "namespaces" {
        let errors = check_labels(&object["metadata"]["labels"]);
        if errors.is_empty() {
            return Ok(());
        }
        let causes: Vec<(String, String)> = errors
            .into_iter()
            .map(|(field, message)| (field.clone(), format!("{field}: {message}")))
            .collect();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        return Err(ApiError::invalid("Namespace", "", name, &causes));
    }
    let is_pod = resource.group.is_empty() && resource.plural == "pods";
    let template = template_path(resource);
    if !is_pod && template.is_none() {
        return Ok(());
    }
    let labels = match namespace {
        Some(ns) => ns["metadata"]["labels"].clone(),
        None => {
            let Some(name) = object["metadata"]["namespace"].as_str() else {
                return Ok(());
            };
            let namespaces = api
                .resources
                .get("", "v1", "namespaces")
                .expect("namespaces are served");
            match crate::apiserver::objects::get(api, namespaces, None, name).await {
                Ok(ns) => ns["metadata"]["labels"].clone(),
                Err(_) => return Ok(()),
            }
        }
    };
    let pod = match template {
        Some(path) => path.iter().fold(object, |v, key| &v[*key]),
        None => object,
    };
    let judge = |policy: &Policy| violations(policy.level, &pod["metadata"], &pod["spec"]);
    if is_pod && let Some(policy) = policy(&labels, "enforce") {
        audit::annotate(
            "pod-security.kubernetes.io/enforce-policy",
            policy.describe(),
        );
        let found = judge(&policy);
        if !found.is_empty() {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            return Err(forbidden_on("pods", "", name, &message(&policy, &found)));
        }
    }
    if let Some(policy) = policy(&labels, "warn") {
        let found = judge(&policy);
        if !found.is_empty() {
            let text = message(&policy, &found);
            warnings::add(format!("would {}", text.replacen("violates", "violate", 1)));
        }
    }
    if let Some(policy) = policy(&labels, "audit") {
        let found = judge(&policy);
        if !found.is_empty() {
            audit::annotate(
                "pod-security.kubernetes.io/audit-violations",
                format!(
                    "would {}",
                    message(&policy, &found).replacen("violates", "violate", 1)
                ),
            );
        }
    }
    Ok(())
}

/// The label prefix; `<prefix><mode>` and `<prefix><mode>-version`.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
pub const MODES: [&str; 3] = ["enforce", "audit", "warn"];

/// A Pod Security Standards level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// One mode's policy from a namespace's labels: its level and version (`latest` unless set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    pub version: String,
}

impl Policy {
    /// `"restricted:latest"`, as messages name it.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.level.name(), self.version)
    }
}

/// The policy of `mode` in a namespace with `labels` (`None`: no label, privileged).
pub fn policy(labels: &Value, mode: &str) -> Option<Policy> {
    let level = Level::parse(labels[format!("{LABEL_PREFIX}{mode}")].as_str()?)?;
    let version = labels[format!("{LABEL_PREFIX}{mode}-version")]
        .as_str()
        .filter(|v| !v.is_empty())
        .unwrap_or("latest")
        .to_owned();
    Some(Policy { level, version })
}

/// Problems with a namespace's Pod Security labels: an unknown level or a malformed version,
/// as `metadata.labels[…]` field errors.
pub fn check_labels(labels: &Value) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for mode in MODES {
        let key = format!("{LABEL_PREFIX}{mode}");
        if let Some(value) = labels[&key].as_str()
            && Level::parse(value).is_none()
        {
            errors.push((
                format!("metadata.labels[{key}]"),
                format!("Unsupported value: {value:?}: supported values: \"privileged\", \"baseline\", \"restricted\""),
            ));
        }
        let key = format!("{key}-version");
        if let Some(value) = labels[&key].as_str()
            && !is_version(value)
        {
            errors.push((
                format!("metadata.labels[{key}]"),
                format!(
                    "Invalid value: {value:?}: must be \"latest\" or of the form \"v1.<minor>\""
                ),
            ));
        }
    }
    errors
}

fn is_version(v: &str) -> bool {
    v == "latest"
        || v.strip_prefix("v1.")
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
}

/// The violations of `level` by a pod whose metadata is `meta` and spec `spec`, each as
/// `reason (detail)`, in Kubernetes' order (by check).
pub fn violations(level: Level, meta: &Value, spec: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let pod = PodView::new(meta, spec);
    // Kubernetes' order: the baseline checks by ID, then the restricted ones by ID; a
    // restricted check replaces the baseline check of the same concern.
    let mut checks: Vec<(&str, Option<(String, String)>)> = vec![
        ("appArmorProfile", pod.app_armor()),
        ("hostNamespaces", pod.host_namespaces()),
        ("hostPathVolumes", pod.host_path_volumes()),
        ("hostPorts", pod.host_ports()),
        ("privileged", pod.privileged()),
        ("procMount", pod.proc_mount()),
        ("seLinuxOptions", pod.se_linux()),
        ("sysctls", pod.sysctls()),
        ("windowsHostProcess", pod.windows_host_process()),
    ];
    if level == Level::Restricted {
        checks.extend([
            (
                "~allowPrivilegeEscalation",
                pod.allow_privilege_escalation(),
            ),
            ("~capabilities_restricted", pod.capabilities_restricted()),
            ("~restrictedVolumes", pod.restricted_volumes()),
            ("~runAsNonRoot", pod.run_as_non_root()),
            ("~runAsUser", pod.run_as_user()),
            ("~seccompProfile_restricted", pod.seccomp_restricted()),
        ]);
    } else {
        checks.extend([
            ("capabilities_baseline", pod.capabilities_baseline()),
            ("seccompProfile_baseline", pod.seccomp_baseline()),
        ]);
    }
    // `~` sorts the restricted checks after every baseline one.
    checks.sort_by_key(|(id, _)| *id);
    checks
        .into_iter()
        .filter_map(|(_, v)| v)
        .map(|(reason, detail)| {
            if detail.is_empty() {
                reason
            } else {
                format!("{reason} ({detail})")
            }
        })
        .collect()
}

/// `violates PodSecurity "restricted:latest": a (…), b (…)`.
pub fn message(policy: &Policy, violations: &[String]) -> String {
    format!(
        "violates PodSecurity {:?}: {}",
        policy.describe(),
        violations.join(", ")
    )
}

/// The capabilities baseline allows adding (the default set of container runtimes).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The volume types restricted allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

struct PodView<'a> {
    meta: &'a Value,
    spec: &'a Value,
    /// Init, regular and ephemeral containers.
    containers: Vec<&'a Value>,
}

/// `container "a"` or `containers "a", "b"`.
fn containers_named(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let noun = if names.len() == 1 {
        "container"
    } else {
        "containers"
    };
    format!("{noun} {}", quoted.join(", "))
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pluralize<'s>(n: usize, one: &'s str, many: &'s str) -> &'s str {
    if n == 1 { one } else { many }
}

impl<'a> PodView<'a> {
    fn new(meta: &'a Value, spec: &'a Value) -> Self {
        let containers = ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .filter_map(|f| spec[f].as_array())
            .flatten()
            .collect();
        Self {
            meta,
            spec,
            containers,
        }
    }

    fn name(c: &Value) -> &str {
        c["name"].as_str().unwrap_or_default()
    }

    fn pod_sc(&self) -> &Value {
        &self.spec["securityContext"]
    }

    /// Names of the containers for which `bad` holds.
    fn failing(&self, bad: impl Fn(&Value) -> bool) -> Vec<&'a str> {
        self.containers
            .iter()
            .filter(|c| bad(c))
            .map(|c| Self::name(c))
            .collect()
    }

    fn host_namespaces(&self) -> Option<(String, String)> {
        let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
            .iter()
            .filter(|f| self.spec[**f] == Value::Bool(true))
            .map(|f| format!("{f}=true"))
            .collect();
        (!set.is_empty()).then(|| ("host namespaces".to_owned(), set.join(", ")))
    }

    fn privileged(&self) -> Option<(String, String)> {
        let bad = self.failing(|c| c["securityContext"]["privileged"] == Value::Bool(true));
        (!bad.is_empty()).then(|| {
            (
                "privileged".to_owned(),
                format!(
                    "{} must not set securityContext.privileged=true",
                    containers_named(&bad)
                ),
            )
        })
    }

    fn added_capabilities(c: &Value) -> Vec<&str> {
        c["securityContext"]["capabilities"]["add"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    fn capabilities_baseline(&self) -> Option<(String, String)> {
        let mut caps = BTreeSet::new();
        let bad = self.failing(|c| {
            let extra: Vec<&str> = Self::added_capabilities(c)
                .into_iter()
                .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
                .collect();
            !extra.is_empty()
        });
        for c in &self.containers {
            for cap in Self::added_capabilities(c) {
                if !BASELINE_CAPABILITIES.contains(&cap) {
                    caps.insert(cap);
                }
            }
        }
        (!bad.is_empty()).then(|| {
            let caps: Vec<&str> = caps.into_iter().collect();
            (
                "non-default capabilities".to_owned(),
                format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    containers_named(&bad),
                    quoted(&caps)
                ),
            )
        })
    }

    fn host_path_volumes(&self) -> Option<(String, String)> {
        let names: Vec<&str> = self.spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
            .map(|v| v["name"].as_str().unwrap_or_default())
            .collect();
        (!names.is_empty()).then(|| {
            (
                "hostPath volumes".to_owned(),
                format!(
                    "{} {}",
                    pluralize(names.len(), "volume", "volumes"),
                    quoted(&names)
                ),
            )
        })
    }

    fn host_ports(&self) -> Option<(String, String)> {
        let mut ports = BTreeSet::new();
        let bad = self.failing(|c| {
            c["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["hostPort"].as_i64().unwrap_or(0) != 0))
        });
        for c in &self.containers {
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(port) = p["hostPort"].as_i64().filter(|p| *p != 0) {
                    ports.insert(port);
                }
            }
        }
        (!bad.is_empty()).then(|| {
            let ports: Vec<String> = ports.iter().map(i64::to_string).collect();
            (
                "hostPort".to_owned(),
                format!(
                    "{} {} {} {}",
                    containers_named(&bad),
                    pluralize(bad.len(), "uses", "use"),
                    pluralize(ports.len(), "hostPort", "hostPorts"),
                    ports.join(", ")
                ),
            )
        })
    }

    fn proc_mount(&self) -> Option<(String, String)> {
        let mut types = BTreeSet::new();
        let bad = self.failing(|c| {
            c["securityContext"]["procMount"]
                .as_str()
                .is_some_and(|t| t != "Default")
        });
        for c in &self.containers {
            if let Some(t) = c["securityContext"]["procMount"]
                .as_str()
                .filter(|t| *t != "Default")
            {
                types.insert(t);
            }
        }
        (!bad.is_empty()).then(|| {
            let types: Vec<&str> = types.into_iter().collect();
            (
                "procMount".to_owned(),
                format!(
                    "{} must not set securityContext.procMount to {}",
                    containers_named(&bad),
                    quoted(&types)
                ),
            )
        })
    }

    fn app_armor(&self) -> Option<(String, String)> {
        let bad_type = |sc: &Value| {
            sc["appArmorProfile"]["type"]
                .as_str()
                .is_some_and(|t| t != "RuntimeDefault" && t != "Localhost")
        };
        let mut details = Vec::new();
        if bad_type(self.pod_sc()) {
            details.push(format!(
                "pod must not set securityContext.appArmorProfile.type to {:?}",
                self.pod_sc()["appArmorProfile"]["type"]
                    .as_str()
                    .unwrap_or_default()
            ));
        }
        let bad = self.failing(|c| bad_type(&c["securityContext"]));
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.appArmorProfile.type to \"Unconfined\"",
                containers_named(&bad)
            ));
        }
        let prefix = "container.apparmor.security.beta.kubernetes.io/";
        let mut annotations: Vec<String> = self.meta["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                k.starts_with(prefix)
                    && v.as_str()
                        .is_some_and(|v| v != "runtime/default" && !v.starts_with("localhost/"))
            })
            .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or_default()))
            .collect();
        annotations.sort();
        if !annotations.is_empty() {
            details.push(format!(
                "{} {}",
                pluralize(annotations.len(), "annotation", "annotations"),
                annotations.join(", ")
            ));
        }
        (!details.is_empty()).then(|| ("forbidden AppArmor profile".to_owned(), details.join("; ")))
    }

    fn se_linux(&self) -> Option<(String, String)> {
        const TYPES: &[&str] = &[
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ];
        let bad = |sc: &Value| {
            let o = &sc["seLinuxOptions"];
            o.is_object()
                && (!TYPES.contains(&o["type"].as_str().unwrap_or_default())
                    || !o["user"].as_str().unwrap_or_default().is_empty()
                    || !o["role"].as_str().unwrap_or_default().is_empty())
        };
        let mut details = Vec::new();
        if bad(self.pod_sc()) {
            details.push("pod must not set securityContext.seLinuxOptions".to_owned());
        }
        let containers = self.failing(|c| bad(&c["securityContext"]));
        if !containers.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seLinuxOptions",
                containers_named(&containers)
            ));
        }
        (!details.is_empty()).then(|| ("seLinuxOptions".to_owned(), details.join("; ")))
    }

    fn sysctls(&self) -> Option<(String, String)> {
        let forbidden: Vec<&str> = self.pod_sc()["sysctls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .filter(|n| !apiary_api::core_v1::Sysctl::is_safe(n))
            .collect();
        (!forbidden.is_empty()).then(|| ("forbidden sysctls".to_owned(), forbidden.join(", ")))
    }

    fn windows_host_process(&self) -> Option<(String, String)> {
        let host = |sc: &Value| sc["windowsOptions"]["hostProcess"] == Value::Bool(true);
        let bad = self.failing(|c| host(&c["securityContext"]));
        (host(self.pod_sc()) || !bad.is_empty()).then(|| ("hostProcess".to_owned(), String::new()))
    }

    fn seccomp_type(sc: &Value) -> Option<&str> {
        sc["seccompProfile"]["type"].as_str()
    }

    fn seccomp_baseline(&self) -> Option<(String, String)> {
        let mut details = Vec::new();
        if Self::seccomp_type(self.pod_sc()) == Some("Unconfined") {
            details.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_owned(),
            );
        }
        let bad = self.failing(|c| Self::seccomp_type(&c["securityContext"]) == Some("Unconfined"));
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers_named(&bad)
            ));
        }
        (!details.is_empty()).then(|| ("seccompProfile".to_owned(), details.join("; ")))
    }

    fn seccomp_restricted(&self) -> Option<(String, String)> {
        let valid = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
        let pod_type = Self::seccomp_type(self.pod_sc());
        let mut details = Vec::new();
        if pod_type.is_some() && !valid(pod_type) {
            details.push(format!(
                "pod must not set securityContext.seccompProfile.type to {:?}",
                pod_type.unwrap_or_default()
            ));
        }
        let explicit_bad = self.failing(|c| {
            let t = Self::seccomp_type(&c["securityContext"]);
            t.is_some() && !valid(t)
        });
        if !explicit_bad.is_empty() {
            let mut types: Vec<&str> = self
                .containers
                .iter()
                .filter_map(|c| Self::seccomp_type(&c["securityContext"]))
                .filter(|t| !valid(Some(t)))
                .collect();
            types.sort_unstable();
            types.dedup();
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                containers_named(&explicit_bad),
                quoted(&types)
            ));
        }
        if !valid(pod_type) {
            let unset = self.failing(|c| Self::seccomp_type(&c["securityContext"]).is_none());
            if !unset.is_empty() {
                details.push(format!(
                    "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                    containers_named(&unset)
                ));
            }
        }
        (!details.is_empty()).then(|| ("seccompProfile".to_owned(), details.join("; ")))
    }

    fn allow_privilege_escalation(&self) -> Option<(String, String)> {
        let bad = self
            .failing(|c| c["securityContext"]["allowPrivilegeEscalation"] != Value::Bool(false));
        (!bad.is_empty()).then(|| {
            (
                "allowPrivilegeEscalation != false".to_owned(),
                format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    containers_named(&bad)
                ),
            )
        })
    }

    fn capabilities_restricted(&self) -> Option<(String, String)> {
        let drops_all = |c: &Value| {
            c["securityContext"]["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        };
        let mut details = Vec::new();
        let no_drop = self.failing(|c| !drops_all(c));
        if !no_drop.is_empty() {
            details.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers_named(&no_drop)
            ));
        }
        let mut caps = BTreeSet::new();
        let adds = self.failing(|c| {
            Self::added_capabilities(c)
                .iter()
                .any(|cap| *cap != "NET_BIND_SERVICE")
        });
        for c in &self.containers {
            for cap in Self::added_capabilities(c) {
                if cap != "NET_BIND_SERVICE" {
                    caps.insert(cap);
                }
            }
        }
        if !adds.is_empty() {
            let caps: Vec<&str> = caps.into_iter().collect();
            details.push(format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_named(&adds),
                quoted(&caps)
            ));
        }
        (!details.is_empty()).then(|| ("unrestricted capabilities".to_owned(), details.join("; ")))
    }

    fn restricted_volumes(&self) -> Option<(String, String)> {
        let mut names = Vec::new();
        let mut types = BTreeSet::new();
        for v in self.spec["volumes"].as_array().into_iter().flatten() {
            let Some(object) = v.as_object() else {
                continue;
            };
            let kind = object
                .iter()
                .find(|(k, value)| *k != "name" && !value.is_null())
                .map(|(k, _)| k.as_str());
            if let Some(kind) = kind
                && !RESTRICTED_VOLUMES.contains(&kind)
            {
                names.push(v["name"].as_str().unwrap_or_default());
                types.insert(kind);
            }
        }
        (!names.is_empty()).then(|| {
            let types: Vec<&str> = types.into_iter().collect();
            (
                "restricted volume types".to_owned(),
                format!(
                    "{} {} {} restricted volume {} {}",
                    pluralize(names.len(), "volume", "volumes"),
                    quoted(&names),
                    pluralize(names.len(), "uses", "use"),
                    pluralize(types.len(), "type", "types"),
                    quoted(&types)
                ),
            )
        })
    }

    fn run_as_non_root(&self) -> Option<(String, String)> {
        let pod = self.pod_sc()["runAsNonRoot"].as_bool();
        let mut details = Vec::new();
        if pod == Some(false) {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_owned());
        }
        let explicit = self.failing(|c| c["securityContext"]["runAsNonRoot"] == Value::Bool(false));
        if !explicit.is_empty() {
            details.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                containers_named(&explicit)
            ));
        }
        if pod != Some(true) {
            let unset = self.failing(|c| c["securityContext"]["runAsNonRoot"].is_null());
            if !unset.is_empty() {
                details.push(format!(
                    "pod or {} must set securityContext.runAsNonRoot=true",
                    containers_named(&unset)
                ));
            }
        }
        (!details.is_empty()).then(|| ("runAsNonRoot != true".to_owned(), details.join("; ")))
    }

    fn run_as_user(&self) -> Option<(String, String)> {
        let mut details = Vec::new();
        if self.pod_sc()["runAsUser"].as_i64() == Some(0) {
            details.push("pod must not set runAsUser=0".to_owned());
        }
        let bad = self.failing(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0));
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set runAsUser=0",
                containers_named(&bad)
            ));
        }
        (!details.is_empty()).then(|| ("runAsUser=0".to_owned(), details.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(level: Level, spec: Value) -> Vec<String> {
        violations(level, &json!({}), &spec)
    }

    #[test]
    fn a_plain_pod_passes_baseline_and_fails_restricted_with_every_reason() {
        let spec = json!({"containers": [{"name": "web", "image": "nginx"}]});
        assert!(check(Level::Baseline, spec.clone()).is_empty());
        assert_eq!(
            message(
                &Policy {
                    level: Level::Restricted,
                    version: "latest".into()
                },
                &check(Level::Restricted, spec)
            ),
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"web\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"web\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"web\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"web\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
    }

    #[test]
    fn a_restricted_pod_passes() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "web", "image": "nginx", "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
        });
        assert_eq!(check(Level::Restricted, spec), Vec::<String>::new());
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "containers": [
                {"name": "a", "image": "i", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 80}]},
                {"name": "b", "image": "i", "securityContext": {"privileged": true, "procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"}}},
            ],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        });
        assert_eq!(
            check(Level::Baseline, spec),
            [
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
                "host namespaces (hostNetwork=true, hostPID=true)",
                "hostPath volumes (volume \"root\")",
                "hostPort (container \"a\" uses hostPort 80)",
                "privileged (containers \"a\", \"b\" must not set securityContext.privileged=true)",
                "procMount (container \"b\" must not set securityContext.procMount to \"Unmasked\")",
                "seccompProfile (container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
                "forbidden sysctls (kernel.msgmax)",
            ]
        );
    }

    #[test]
    fn restricted_names_forbidden_volume_types_and_root() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}],
        });
        assert_eq!(
            check(Level::Restricted, spec),
            [
                "restricted volume types (volume \"n\" uses restricted volume type \"nfs\")",
                "runAsUser=0 (pod must not set runAsUser=0)",
            ]
        );
    }

    #[test]
    fn labels_pick_the_policy_and_bad_ones_are_named() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/warn-version": "v1.32"});
        assert_eq!(
            policy(&labels, "enforce").unwrap().describe(),
            "baseline:latest"
        );
        assert_eq!(
            policy(&labels, "warn").unwrap().describe(),
            "restricted:v1.32"
        );
        assert!(policy(&labels, "audit").is_none());
        let bad = json!({"pod-security.kubernetes.io/enforce": "strict", "pod-security.kubernetes.io/enforce-version": "1.2"});
        let errors = check_labels(&bad);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].1.contains("\"strict\""));
    }
}
