//! Validation of pods' and containers' `securityContext` (kube's `ValidatePodSecurityContext`,
//! `ValidateSecurityContext`, `validateSeccompProfileField`, `validateSysctls`).

use std::collections::BTreeSet;

use super::{BadValue, ErrorList, FieldError};
use crate::core_v1::{PodSpec, SeccompProfile, SecurityContext};

const MAX_ID: i64 = i32::MAX as i64;
/// `PodFSGroupChangePolicy`'s values.
const FS_GROUP_CHANGE_POLICIES: [&str; 2] = ["OnRootMismatch", "Always"];
const ID_MSG: &str = "must be between 0 and 2147483647, inclusive";
const SYSCTL_MAX_LENGTH: usize = 253;
const SYSCTL_FMT: &str = r"([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?";

fn check_id(errs: &mut ErrorList, path: String, id: Option<i64>) {
    if let Some(id) = id
        && !(0..=MAX_ID).contains(&id)
    {
        errs.push(FieldError::invalid(path, id, ID_MSG));
    }
}

/// The pod's and each container's security context.
pub(super) fn validate(spec: &PodSpec, path: &str, errs: &mut ErrorList) {
    if let Some(sc) = &spec.security_context {
        let p = format!("{path}.securityContext");
        check_id(errs, format!("{p}.runAsUser"), sc.run_as_user);
        check_id(errs, format!("{p}.runAsGroup"), sc.run_as_group);
        check_id(errs, format!("{p}.fsGroup"), sc.fs_group);
        if let Some(policy) = &sc.fs_group_change_policy
            && !FS_GROUP_CHANGE_POLICIES.contains(&policy.as_str())
        {
            errs.push(FieldError::not_supported(
                format!("{p}.fsGroupChangePolicy"),
                policy,
                &FS_GROUP_CHANGE_POLICIES,
            ));
        }
        for (i, g) in sc.supplemental_groups.iter().enumerate() {
            check_id(errs, format!("{p}.supplementalGroups[{i}]"), Some(*g));
        }
        if let Some(profile) = &sc.seccomp_profile {
            seccomp(profile, &format!("{p}.seccompProfile"), errs);
        }
        let mut names = BTreeSet::new();
        for (i, sysctl) in sc.sysctls.iter().enumerate() {
            let sp = format!("{p}.sysctls[{i}].name");
            if sysctl.name.is_empty() {
                errs.push(FieldError::required(sp));
            } else if !is_sysctl_name(&sysctl.name) {
                errs.push(FieldError::invalid(
                    sp,
                    &sysctl.name,
                    format!(
                        "must have at most {SYSCTL_MAX_LENGTH} characters and match regex {SYSCTL_FMT}"
                    ),
                ));
            } else if !names.insert(sysctl.name.replace('/', ".")) {
                errs.push(FieldError::duplicate(sp, &sysctl.name));
            }
        }
    }
    for (field, list) in [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            if let Some(sc) = &c.security_context {
                container(sc, &format!("{path}.{field}[{i}].securityContext"), errs);
            }
        }
    }
}

fn container(sc: &SecurityContext, p: &str, errs: &mut ErrorList) {
    check_id(errs, format!("{p}.runAsUser"), sc.run_as_user);
    check_id(errs, format!("{p}.runAsGroup"), sc.run_as_group);
    if let Some(mount) = &sc.proc_mount
        && !["Default", "Unmasked"].contains(&mount.as_str())
    {
        errs.push(FieldError::not_supported(
            format!("{p}.procMount"),
            mount,
            &["Default", "Unmasked"],
        ));
    }
    if let Some(profile) = &sc.seccomp_profile {
        seccomp(profile, &format!("{p}.seccompProfile"), errs);
    }
    if sc.allow_privilege_escalation == Some(false) {
        let value = || BadValue::Raw(serde_json::to_string(sc).unwrap_or_default());
        if sc.privileged == Some(true) {
            errs.push(FieldError::invalid(
                p,
                value(),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let adds_sys_admin = sc.capabilities.as_ref().is_some_and(|c| {
            c.add
                .iter()
                .any(|cap| matches!(cap.as_str(), "SYS_ADMIN" | "CAP_SYS_ADMIN"))
        });
        if adds_sys_admin {
            errs.push(FieldError::invalid(
                p,
                value(),
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
}

fn seccomp(profile: &SeccompProfile, p: &str, errs: &mut ErrorList) {
    const TYPES: &[&str] = &["Localhost", "RuntimeDefault", "Unconfined"];
    let localhost = profile.localhost_profile.as_deref();
    match profile.type_.as_str() {
        "" => errs.push(FieldError::required(format!("{p}.type"))),
        "Localhost" => match localhost {
            None | Some("") => errs.push(
                FieldError::required(format!("{p}.localhostProfile"))
                    .with_detail("must be set when seccomp type is Localhost"),
            ),
            Some(path) if path.starts_with('/') => errs.push(FieldError::invalid(
                format!("{p}.localhostProfile"),
                path,
                "must be a relative path",
            )),
            Some(path) if path.split('/').any(|part| part == "..") => {
                errs.push(FieldError::invalid(
                    format!("{p}.localhostProfile"),
                    path,
                    "must not contain '..'",
                ))
            }
            Some(_) => {}
        },
        t if TYPES.contains(&t) => {
            if let Some(path) = localhost {
                errs.push(FieldError::invalid(
                    format!("{p}.localhostProfile"),
                    path,
                    "can only be set when seccomp type is Localhost",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(format!("{p}.type"), other, TYPES)),
    }
}

/// `^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$`, at most 253 long.
fn is_sysctl_name(name: &str) -> bool {
    let segment_ok = |s: &str| {
        let b = s.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'_')
    };
    name.len() <= SYSCTL_MAX_LENGTH && name.split(['.', '/']).all(segment_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let spec: PodSpec = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Vec::new();
        validate(&spec, "spec", &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn escalation_cannot_be_refused_to_a_privileged_container() {
        let errs = errors(
            "containers:\n- name: c\n  image: i\n  securityContext: {privileged: true, allowPrivilegeEscalation: false, capabilities: {add: [SYS_ADMIN]}}\n",
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("spec.containers[0].securityContext: Invalid value: "),
            "{errs:?}"
        );
        assert!(
            errs[0].ends_with(
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
            )
        );
        assert!(errs[1].ends_with("`capabilities.Add` CAP_SYS_ADMIN"));
    }

    #[test]
    fn ids_profiles_proc_mounts_and_sysctls_are_checked() {
        let errs = errors(
            r#"
securityContext:
  runAsUser: -1
  fsGroup: 4294967296
  fsGroupChangePolicy: Sometimes
  seccompProfile: {type: Localhost}
  sysctls: [{name: net.ipv4.tcp_syncookies, value: "1"}, {name: net/ipv4/tcp_syncookies, value: "1"}, {name: "Bad..Name", value: "1"}]
containers:
- name: c
  image: i
  securityContext:
    procMount: Weird
    seccompProfile: {type: RuntimeDefault, localhostProfile: x.json}
"#,
        );
        let expected = [
            "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive",
            "spec.securityContext.fsGroup: Invalid value: 4294967296: must be between 0 and 2147483647, inclusive",
            "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"OnRootMismatch\", \"Always\"",
            "spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost",
            "spec.securityContext.sysctls[1].name: Duplicate value: \"net/ipv4/tcp_syncookies\"",
        ];
        for e in expected {
            assert!(errs.iter().any(|x| x == e), "{e} not in {errs:#?}");
        }
        assert!(errs.iter().any(|e| {
            e.starts_with("spec.securityContext.sysctls[2].name: Invalid value: \"Bad..Name\"")
        }));
        assert!(errs.iter().any(|e| e.starts_with(
            "spec.containers[0].securityContext.procMount: Unsupported value: \"Weird\""
        )));
        assert!(
            errs.iter()
                .any(|e| e.ends_with("can only be set when seccomp type is Localhost"))
        );
        assert_eq!(errs.len(), 8, "{errs:#?}");
    }

    #[test]
    fn a_profile_may_not_climb_out_of_the_seccomp_directory() {
        let errs = errors(
            "containers:\n- name: c\n  image: i\n  securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../etc/x}}\n",
        );
        assert_eq!(
            errs,
            [
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value: \"../../etc/x\": must not contain '..'"
            ]
        );
        assert!(errors("containers:\n- name: c\n  image: i\n  securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/x.json}}\n").is_empty());
    }
}
