//! Validation of `apps/v1`: Deployment, ReplicaSet, StatefulSet, DaemonSet.

use super::{
    BadValue, ErrorList, FieldError, NameRule, go_map, go_selector, immutable, invalid_each,
    is_dns1035_label, is_valid_percent, non_negative, validate_label_selector,
    validate_object_meta, validate_object_meta_update,
};
use crate::{
    apps_v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    core_v1::PodTemplateSpec,
    intstr::IntOrString,
    selector::LabelSelector,
    validation::core::validate_pod_template,
};

/// The selector and template every workload has: the selector is required and non-empty and
/// matches the template's labels; the template's pods restart as `restart_policies` allow.
pub(super) fn validate_selector_and_template(
    selector: Option<&LabelSelector>,
    template: &PodTemplateSpec,
    kind: &str,
    restart_policies: &[&str],
    errs: &mut ErrorList,
) {
    let mismatch = || {
        FieldError::invalid(
            "spec.template.metadata.labels",
            go_map(&template.metadata.labels),
            "`selector` does not match template `labels`",
        )
    };
    match selector {
        // A missing selector matches nothing, so Kubernetes reports the mismatch too.
        None => errs.extend([FieldError::required("spec.selector"), mismatch()]),
        Some(sel) => {
            errs.extend(validate_label_selector(sel, "spec.selector"));
            if sel.is_empty() {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    go_selector(Some(sel)),
                    format!("empty selector is invalid for {kind}"),
                ));
            } else if !sel.matches(&template.metadata.labels) {
                errs.push(mismatch());
            }
        }
    }
    errs.extend(validate_pod_template(template, "spec.template"));
    let policy = match template.spec.restart_policy.as_str() {
        "" => "Always", // the default
        p => p,
    };
    if !restart_policies.contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            restart_policies,
        ));
    }
}

fn replicated(
    template: &PodTemplateSpec,
    kind: &str,
    errs: &mut ErrorList,
    selector: Option<&LabelSelector>,
) {
    validate_selector_and_template(selector, template, kind, &["Always"], errs);
    if template.spec.active_deadline_seconds.is_some() {
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
}

/// A non-negative count or a percentage (`maxSurge`, `maxUnavailable`), at most 100 % if
/// `max_100`.
fn int_or_percent(errs: &mut ErrorList, path: &str, v: &IntOrString, max_100: bool) {
    match v {
        IntOrString::Int(n) => non_negative(errs, path, (*n).into()),
        IntOrString::String(s) => {
            let msgs = is_valid_percent(s);
            let ok = msgs.is_empty();
            invalid_each(errs, path, s, msgs);
            if ok && max_100 && v.percent().and_then(Result::ok).is_some_and(|p| p > 100) {
                errs.push(FieldError::invalid(
                    path,
                    s,
                    "must not be greater than 100%",
                ));
            }
        }
    }
}

fn is_zero(v: Option<&IntOrString>) -> bool {
    match v {
        Some(IntOrString::Int(0)) => true,
        Some(IntOrString::String(s)) => s.strip_suffix('%').is_some_and(|d| d.parse() == Ok(0)),
        _ => false,
    }
}

fn check_surge_and_unavailable(
    errs: &mut ErrorList,
    path: &str,
    max_unavailable: Option<&IntOrString>,
    max_surge: Option<&IntOrString>,
) {
    if let Some(u) = max_unavailable {
        int_or_percent(errs, &format!("{path}.maxUnavailable"), u, true);
    }
    if let Some(s) = max_surge {
        int_or_percent(errs, &format!("{path}.maxSurge"), s, false);
    }
    if is_zero(max_unavailable) && is_zero(max_surge) {
        errs.push(FieldError::invalid(
            format!("{path}.maxUnavailable"),
            max_unavailable.map_or(BadValue::Omitted, BadValue::from),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment

/// A Deployment: selector and template, replicas, strategy, timing fields.
pub fn validate_deployment(d: &Deployment) -> ErrorList {
    let mut errs = validate_object_meta(&d.metadata, true, NameRule::Subdomain);
    let spec = &d.spec;
    if let Some(r) = spec.replicas {
        non_negative(&mut errs, "spec.replicas", r.into());
    }
    replicated(
        &spec.template,
        "deployment",
        &mut errs,
        spec.selector.as_ref(),
    );
    if let Some(strategy) = &spec.strategy {
        match strategy.type_.as_str() {
            "Recreate" => {
                if strategy.rolling_update.is_some() {
                    errs.push(FieldError::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            "" | "RollingUpdate" => {
                if let Some(ru) = &strategy.rolling_update {
                    check_surge_and_unavailable(
                        &mut errs,
                        "spec.strategy.rollingUpdate",
                        ru.max_unavailable.as_ref(),
                        ru.max_surge.as_ref(),
                    );
                }
            }
            other => errs.push(FieldError::not_supported(
                "spec.strategy.type",
                other,
                &["Recreate", "RollingUpdate"],
            )),
        }
    }
    non_negative(
        &mut errs,
        "spec.minReadySeconds",
        spec.min_ready_seconds.into(),
    );
    if let Some(r) = spec.revision_history_limit {
        non_negative(&mut errs, "spec.revisionHistoryLimit", r.into());
    }
    if let Some(p) = spec.progress_deadline_seconds {
        non_negative(&mut errs, "spec.progressDeadlineSeconds", p.into());
        if p <= spec.min_ready_seconds {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                p,
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

/// A Deployment update: `spec.selector` is immutable.
pub fn validate_update_deployment(old: &Deployment, new: &Deployment) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_deployment(new));
    immutable(
        &mut errs,
        "spec.selector",
        &old.spec.selector,
        &new.spec.selector,
        || go_selector(new.spec.selector.as_ref()),
    );
    errs
}

// ---------------------------------------------------------------------------------------------
// ReplicaSet

/// A ReplicaSet: selector and template, replicas.
pub fn validate_replica_set(rs: &ReplicaSet) -> ErrorList {
    let mut errs = validate_object_meta(&rs.metadata, true, NameRule::Subdomain);
    if let Some(r) = rs.spec.replicas {
        non_negative(&mut errs, "spec.replicas", r.into());
    }
    non_negative(
        &mut errs,
        "spec.minReadySeconds",
        rs.spec.min_ready_seconds.into(),
    );
    replicated(
        &rs.spec.template,
        "replicaset",
        &mut errs,
        rs.spec.selector.as_ref(),
    );
    errs
}

/// A ReplicaSet update: `spec.selector` is immutable.
pub fn validate_update_replica_set(old: &ReplicaSet, new: &ReplicaSet) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_replica_set(new));
    immutable(
        &mut errs,
        "spec.selector",
        &old.spec.selector,
        &new.spec.selector,
        || go_selector(new.spec.selector.as_ref()),
    );
    errs
}

// ---------------------------------------------------------------------------------------------
// StatefulSet

/// A StatefulSet: selector and template, policies, ordinals.
pub fn validate_stateful_set(sts: &StatefulSet) -> ErrorList {
    let mut errs = validate_object_meta(&sts.metadata, true, NameRule::Subdomain);
    let spec = &sts.spec;
    if let Some(r) = spec.replicas {
        non_negative(&mut errs, "spec.replicas", r.into());
    }
    if !spec.service_name.is_empty() {
        invalid_each(
            &mut errs,
            "spec.serviceName",
            &spec.service_name,
            is_dns1035_label(&spec.service_name),
        );
    }
    match spec.pod_management_policy.as_str() {
        "" | "OrderedReady" | "Parallel" => {}
        other => errs.push(FieldError::invalid(
            "spec.podManagementPolicy",
            other,
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    if let Some(us) = &spec.update_strategy {
        match us.type_.as_str() {
            "OnDelete" => {
                if us.rolling_update.is_some() {
                    errs.push(FieldError::invalid(
                        "spec.updateStrategy.rollingUpdate",
                        BadValue::Omitted,
                        "only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
            }
            "" | "RollingUpdate" => {
                if let Some(ru) = &us.rolling_update {
                    if let Some(p) = ru.partition {
                        non_negative(
                            &mut errs,
                            "spec.updateStrategy.rollingUpdate.partition",
                            p.into(),
                        );
                    }
                    if let Some(u) = &ru.max_unavailable {
                        let p = "spec.updateStrategy.rollingUpdate.maxUnavailable";
                        int_or_percent(&mut errs, p, u, true);
                        if is_zero(Some(u)) {
                            errs.push(FieldError::invalid(p, u, "must be greater than 0"));
                        }
                    }
                }
            }
            other => errs.push(FieldError::invalid(
                "spec.updateStrategy",
                other,
                "must be 'RollingUpdate' or 'OnDelete'",
            )),
        }
    }
    if let Some(o) = &spec.ordinals {
        non_negative(&mut errs, "spec.ordinals.start", o.start.into());
    }
    non_negative(
        &mut errs,
        "spec.minReadySeconds",
        spec.min_ready_seconds.into(),
    );
    if let Some(r) = spec.revision_history_limit {
        non_negative(&mut errs, "spec.revisionHistoryLimit", r.into());
    }
    // The pods get a volume per claim template (Kubernetes does not check the template's
    // mounts at all; here they are checked against its volumes and the templates').
    let mut template = spec.template.clone();
    for (i, claim) in spec.volume_claim_templates.iter().enumerate() {
        let p = format!("spec.volumeClaimTemplates[{i}]");
        let name = claim["metadata"]["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.metadata.name")));
        } else {
            template.spec.volumes.retain(|v| v.name != name);
            template.spec.volumes.push(crate::core_v1::Volume {
                name: name.to_owned(),
                persistent_volume_claim: Some(crate::core_v1::PersistentVolumeClaimVolumeSource {
                    claim_name: name.to_owned(),
                    read_only: false,
                }),
                ..Default::default()
            });
        }
        match crate::meta::from_json::<crate::core_v1::PersistentVolumeClaimSpec>(
            claim["spec"].clone(),
        ) {
            Ok(claim_spec) => errs.extend(super::validate_claim_template_spec(
                &claim_spec,
                &format!("{p}.spec"),
            )),
            Err(e) => errs.push(FieldError::invalid(
                format!("{p}.spec"),
                BadValue::Omitted,
                e.to_string(),
            )),
        }
    }
    if let Some(policy) = &spec.persistent_volume_claim_retention_policy {
        for field in ["whenDeleted", "whenScaled"] {
            match policy[field].as_str() {
                None | Some("Retain" | "Delete") => {}
                Some(other) => errs.push(FieldError::not_supported(
                    format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                    other,
                    &["Delete", "Retain"],
                )),
            }
        }
    }
    validate_selector_and_template(
        spec.selector.as_ref(),
        &template,
        "statefulset",
        &["Always"],
        &mut errs,
    );
    errs
}

/// A StatefulSet update: only `replicas`, `ordinals`, `template`, `updateStrategy`,
/// `persistentVolumeClaimRetentionPolicy` and `minReadySeconds` may change.
pub fn validate_update_stateful_set(old: &StatefulSet, new: &StatefulSet) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_stateful_set(new));
    let mut restored = new.spec.clone();
    restored.replicas = old.spec.replicas;
    restored.ordinals.clone_from(&old.spec.ordinals);
    restored.template.clone_from(&old.spec.template);
    restored
        .update_strategy
        .clone_from(&old.spec.update_strategy);
    restored
        .persistent_volume_claim_retention_policy
        .clone_from(&old.spec.persistent_volume_claim_retention_policy);
    restored.min_ready_seconds = old.spec.min_ready_seconds;
    if restored != old.spec {
        errs.push(FieldError::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', \
             'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and \
             'minReadySeconds' are forbidden",
        ));
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// DaemonSet

/// A DaemonSet: selector and template, update strategy.
pub fn validate_daemon_set(ds: &DaemonSet) -> ErrorList {
    let mut errs = validate_object_meta(&ds.metadata, true, NameRule::Subdomain);
    let spec = &ds.spec;
    validate_selector_and_template(
        spec.selector.as_ref(),
        &spec.template,
        "daemonset",
        &["Always"],
        &mut errs,
    );
    if let Some(us) = &spec.update_strategy {
        match us.type_.as_str() {
            "OnDelete" => {}
            "" | "RollingUpdate" => {
                if let Some(ru) = &us.rolling_update {
                    // Unset fields default to 1 unavailable and 0 surge.
                    let one = IntOrString::Int(1);
                    check_surge_and_unavailable(
                        &mut errs,
                        "spec.updateStrategy.rollingUpdate",
                        Some(ru.max_unavailable.as_ref().unwrap_or(&one)),
                        Some(ru.max_surge.as_ref().unwrap_or(&IntOrString::Int(0))),
                    );
                }
            }
            other => errs.push(FieldError::not_supported(
                "spec.updateStrategy.type",
                other,
                &["OnDelete", "RollingUpdate"],
            )),
        }
    }
    non_negative(
        &mut errs,
        "spec.minReadySeconds",
        spec.min_ready_seconds.into(),
    );
    if let Some(r) = spec.revision_history_limit {
        non_negative(&mut errs, "spec.revisionHistoryLimit", r.into());
    }
    errs
}

/// A DaemonSet update: `spec.selector` is immutable.
pub fn validate_update_daemon_set(old: &DaemonSet, new: &DaemonSet) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_daemon_set(new));
    immutable(
        &mut errs,
        "spec.selector",
        &old.spec.selector,
        &new.spec.selector,
        || go_selector(new.spec.selector.as_ref()),
    );
    errs
}
