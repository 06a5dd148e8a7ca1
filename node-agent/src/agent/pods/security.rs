//! A container's confinement from its pod's and its own `securityContext`, as the kubelet asks
//! containerd for it: capabilities (containerd's default set, `drop` then `add`), `privileged`,
//! `allowPrivilegeEscalation: false` as `no_new_privs`, a read-only root, `procMount`,
//! supplementary groups (`supplementalGroups` and `fsGroup`), the pod's sysctls (the kubelet's
//! safe set only) and seccomp (`RuntimeDefault`, `Localhost` profiles under the node's seccomp
//! directory, and `--seccomp-default` for pods that name none).

use std::path::{Component, Path};

use apiary_api::core_v1::{Container, Pod, SeccompProfile};
use apiary_runtime::{Seccomp, Security};

/// The node's seccomp settings (the kubelet's `--seccomp-default` and its seccomp directory).
#[derive(Clone, Debug, Default)]
pub struct SeccompSettings {
    /// `RuntimeDefault` for containers whose pod names no profile.
    pub default_runtime_default: bool,
    /// Where `Localhost` profiles live (`<data-dir>/seccomp`).
    pub profile_root: std::path::PathBuf,
}

/// The confinement of container `c` of `pod`; `Err` says why the container cannot run.
pub fn security(pod: &Pod, c: &Container, seccomp: &SeccompSettings) -> Result<Security, String> {
    let own = c.security_context.clone().unwrap_or_default();
    let pod_context = pod.spec.security_context.clone().unwrap_or_default();
    let privileged = own.privileged.unwrap_or(false);
    let capabilities = own.capabilities.clone().unwrap_or_default();
    let capabilities = Security::capabilities_from(&capabilities.add, &capabilities.drop);
    // Kubernetes: escalation is allowed unless asked otherwise (and always when privileged or
    // holding CAP_SYS_ADMIN, which validation enforces).
    let no_new_privileges = own.allow_privilege_escalation == Some(false);
    let mut groups: Vec<u32> = pod_context
        .supplemental_groups
        .iter()
        .chain(pod_context.fs_group.iter())
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut sysctls = std::collections::BTreeMap::new();
    for sysctl in &pod_context.sysctls {
        // The kubelet accepts both separators; it checks the dotted form.
        let name = sysctl.name.replace('/', ".");
        if !apiary_api::core_v1::Sysctl::is_safe(&name) {
            return Err(format!(
                "SysctlForbidden: forbidden sysctl: \"{}\" not allowlisted",
                sysctl.name
            ));
        }
        sysctls.insert(name, sysctl.value.clone());
    }
    let profile = own
        .seccomp_profile
        .as_ref()
        .or(pod_context.seccomp_profile.as_ref());
    let seccomp = match profile {
        Some(profile) => seccomp_of(profile, &seccomp.profile_root)?,
        None if seccomp.default_runtime_default => Seccomp::RuntimeDefault,
        None => Seccomp::Unconfined,
    };
    Ok(Security {
        capabilities,
        privileged,
        no_new_privileges,
        read_only_root: own.read_only_root_filesystem.unwrap_or(false),
        mask_proc: own.proc_mount.as_deref() != Some("Unmasked"),
        seccomp,
        supplementary_groups: groups,
        sysctls,
    })
}

fn seccomp_of(profile: &SeccompProfile, root: &Path) -> Result<Seccomp, String> {
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(Seccomp::RuntimeDefault),
        "Unconfined" => Ok(Seccomp::Unconfined),
        "Localhost" => {
            let name = profile.localhost_profile.as_deref().unwrap_or_default();
            // Relative to the seccomp directory, never out of it.
            let relative = Path::new(name);
            if name.is_empty()
                || !relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            {
                return Err(format!(
                    "seccomp profile {name:?} must be a relative path under the node's seccomp directory"
                ));
            }
            let path = root.join(relative);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
            Ok(Seccomp::Profile(value))
        }
        other => Err(format!("unknown seccomp profile type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_defaults_are_containerds() {
        let p = pod("metadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n");
        let s = security(&p, &p.spec.containers[0], &SeccompSettings::default()).unwrap();
        assert_eq!(s, Security::default());
    }

    #[test]
    fn the_container_overrides_the_pod_and_groups_add_up() {
        let p = pod(r#"
metadata: {name: p}
spec:
  securityContext:
    supplementalGroups: [10, 20]
    fsGroup: 30
    seccompProfile: {type: Unconfined}
    sysctls: [{name: net.ipv4.tcp_syncookies, value: "1"}]
  containers:
  - name: c
    image: i
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      seccompProfile: {type: RuntimeDefault}
      procMount: Unmasked
"#);
        let s = security(&p, &p.spec.containers[0], &SeccompSettings::default()).unwrap();
        assert!(s.no_new_privileges && s.read_only_root && !s.mask_proc);
        assert_eq!(s.capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
        assert_eq!(s.supplementary_groups, [10, 20, 30]);
        assert_eq!(s.sysctls["net.ipv4.tcp_syncookies"], "1");
    }

    #[test]
    fn the_node_default_applies_only_without_a_profile() {
        let p = pod("metadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n");
        let settings = SeccompSettings {
            default_runtime_default: true,
            ..SeccompSettings::default()
        };
        let s = security(&p, &p.spec.containers[0], &settings).unwrap();
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
    }

    #[test]
    fn unsafe_sysctls_and_escaping_profiles_are_refused() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  securityContext:\n    sysctls: [{name: kernel.msgmax, value: '1'}]\n  containers: [{name: c, image: i}]\n",
        );
        let err = security(&p, &p.spec.containers[0], &SeccompSettings::default()).unwrap_err();
        assert!(
            err.contains("SysctlForbidden") && err.contains("kernel.msgmax"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ok.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
        )
        .unwrap();
        let settings = SeccompSettings {
            default_runtime_default: false,
            profile_root: dir.path().join("seccomp"),
        };
        std::fs::create_dir_all(&settings.profile_root).unwrap();
        std::fs::copy(
            dir.path().join("ok.json"),
            settings.profile_root.join("ok.json"),
        )
        .unwrap();
        let local = |name: &str| SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some(name.into()),
        };
        assert!(matches!(
            seccomp_of(&local("ok.json"), &settings.profile_root),
            Ok(Seccomp::Profile(_))
        ));
        for escape in ["../ok.json", "/etc/passwd", ""] {
            assert!(
                seccomp_of(&local(escape), &settings.profile_root).is_err(),
                "{escape}"
            );
        }
    }
}
