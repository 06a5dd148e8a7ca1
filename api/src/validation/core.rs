//! Validation of the core group's kinds.

use std::collections::BTreeSet;

use super::{
    BadValue, CIDR_MSG, ErrorList, FieldError, IP_MSG, MAX_SECRET_SIZE, NameRule, go_strings,
    immutable, invalid_each, is_config_map_key, is_dns1123_label, is_dns1123_subdomain,
    is_qualified_name, is_valid_ip, is_valid_label_value, is_valid_port_name, non_negative,
    port_num, port_num_or_name, validate_annotations, validate_label_selector, validate_labels,
    validate_object_meta, validate_object_meta_update,
};
use crate::{
    core_v1::{
        ConfigMap, Container, Endpoints, Event, LifecycleHandler, Namespace, Node,
        NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, PodSpec, PodTemplateSpec,
        Probe, Secret, Service, ServiceAccount, Toleration, Volume, base64,
    },
    networking_v1::Cidr,
};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn check_protocol(errs: &mut ErrorList, path: &str, protocol: &str) {
    if !protocol.is_empty() && !PROTOCOLS.contains(&protocol) {
        errs.push(FieldError::not_supported(path, protocol, PROTOCOLS));
    }
}

fn check_ip(errs: &mut ErrorList, path: &str, ip: &str) {
    if !is_valid_ip(ip) {
        errs.push(FieldError::invalid(path, ip, IP_MSG));
    }
}

fn check_cidr(errs: &mut ErrorList, path: &str, cidr: &str) {
    if cidr.parse::<Cidr>().is_err() {
        errs.push(FieldError::invalid(path, cidr, CIDR_MSG));
    }
}

// ---------------------------------------------------------------------------------------------
// Namespace

/// A Namespace: its name is a DNS-1123 label.
pub fn validate_namespace(ns: &Namespace) -> ErrorList {
    let mut errs = validate_object_meta(&ns.metadata, false, NameRule::Label);
    for (i, f) in ns.spec.finalizers.iter().enumerate() {
        invalid_each(
            &mut errs,
            &format!("spec.finalizers[{i}]"),
            f,
            is_qualified_name(f),
        );
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Pod

/// A Pod: metadata and [`validate_pod_spec`] at `spec`.
pub fn validate_pod(pod: &Pod) -> ErrorList {
    let mut errs = validate_object_meta(&pod.metadata, true, NameRule::Subdomain);
    errs.extend(validate_pod_spec(&pod.spec, "spec"));
    errs
}

/// A pod template embedded at `path` (e.g. `spec.template`): its labels, annotations and spec.
pub fn validate_pod_template(template: &PodTemplateSpec, path: &str) -> ErrorList {
    let mut errs = validate_labels(
        &template.metadata.labels,
        &format!("{path}.metadata.labels"),
    );
    errs.extend(validate_annotations(
        &template.metadata.annotations,
        &format!("{path}.metadata.annotations"),
    ));
    errs.extend(validate_pod_spec(&template.spec, &format!("{path}.spec")));
    errs
}

const POD_UPDATE_MESSAGE: &str = "pod updates may not change fields other than \
    `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,\
    `spec.tolerations` (only additions to existing tolerations),\
    `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A Pod update: only images, `activeDeadlineSeconds`, added tolerations and a negative
/// `terminationGracePeriodSeconds` (to 1) may change in the spec; `nodeName` is set through
/// `pods/binding`.
pub fn validate_update_pod(old: &Pod, new: &Pod) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_pod(new));
    let mut mutated = old.spec.clone();
    let images = |from: &[Container], to: &mut [Container]| {
        if from.len() == to.len() {
            for (t, f) in to.iter_mut().zip(from) {
                t.image.clone_from(&f.image);
            }
        }
    };
    images(&new.spec.containers, &mut mutated.containers);
    images(&new.spec.init_containers, &mut mutated.init_containers);
    mutated.active_deadline_seconds = new.spec.active_deadline_seconds;
    if old
        .spec
        .tolerations
        .iter()
        .all(|t| new.spec.tolerations.contains(t))
    {
        mutated.tolerations.clone_from(&new.spec.tolerations);
    }
    if old
        .spec
        .termination_grace_period_seconds
        .is_some_and(|s| s < 0)
        && new.spec.termination_grace_period_seconds == Some(1)
    {
        mutated.termination_grace_period_seconds = Some(1);
    }
    if mutated != new.spec {
        errs.push(FieldError::forbidden("spec", POD_UPDATE_MESSAGE));
    }
    if let Some(d) = new.spec.active_deadline_seconds
        && old.spec.active_deadline_seconds.is_some_and(|o| d > o)
    {
        errs.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            d,
            "must be less than or equal to previous value",
        ));
    }
    errs
}

/// A pod spec at `path` (`spec`, `spec.template.spec`, …).
pub fn validate_pod_spec(spec: &PodSpec, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    let volumes = validate_volumes(&spec.volumes, path, &mut errs);

    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers")));
    }
    let mut names = BTreeSet::new();
    for (field, list) in [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            let init = field == "initContainers";
            validate_container(c, &p, init, spec.host_network, &volumes, &mut errs);
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), &c.name));
            }
        }
    }
    super::security_context::validate(spec, path, &mut errs);

    match spec.restart_policy.as_str() {
        "" | "Always" | "OnFailure" | "Never" => {}
        other => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            other,
            &["Always", "OnFailure", "Never"],
        )),
    }
    const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    if !spec.dns_policy.is_empty() && !DNS_POLICIES.contains(&spec.dns_policy.as_str()) {
        errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            &spec.dns_policy,
            DNS_POLICIES,
        ));
    }
    if let Some(d) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&d)
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            d,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    errs.extend(validate_labels(
        &spec.node_selector,
        &format!("{path}.nodeSelector"),
    ));
    for (field, value, check) in [
        (
            "serviceAccountName",
            &spec.service_account_name,
            is_dns1123_subdomain as fn(&str) -> Vec<String>,
        ),
        ("nodeName", &spec.node_name, is_dns1123_subdomain),
        ("hostname", &spec.hostname, is_dns1123_label),
        ("subdomain", &spec.subdomain, is_dns1123_label),
    ] {
        if !value.is_empty() {
            invalid_each(&mut errs, &format!("{path}.{field}"), value, check(value));
        }
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        validate_toleration(t, &format!("{path}.tolerations[{i}]"), &mut errs);
    }
    for (i, alias) in spec.host_aliases.iter().enumerate() {
        check_ip(&mut errs, &format!("{path}.hostAliases[{i}].ip"), &alias.ip);
    }
    if let Some(affinity) = &spec.affinity {
        let p = format!("{path}.affinity");
        if let Some(na) = &affinity.node_affinity {
            let p = format!("{p}.nodeAffinity");
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                let p =
                    format!("{p}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms");
                if req.node_selector_terms.is_empty() {
                    errs.push(
                        FieldError::required(&p)
                            .with_detail("must have at least one node selector term"),
                    );
                }
                for (i, term) in req.node_selector_terms.iter().enumerate() {
                    validate_node_selector_term(term, &format!("{p}[{i}]"), &mut errs);
                }
            }
            for (i, pref) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let p = format!("{p}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                check_weight(pref.weight, &p, &mut errs);
                validate_node_selector_term(
                    &pref.preference,
                    &format!("{p}.preference"),
                    &mut errs,
                );
            }
        }
        for (field, pa) in [
            ("podAffinity", &affinity.pod_affinity),
            ("podAntiAffinity", &affinity.pod_anti_affinity),
        ] {
            let Some(pa) = pa else { continue };
            let p = format!("{p}.{field}");
            for (i, term) in pa
                .required_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let p = format!("{p}.requiredDuringSchedulingIgnoredDuringExecution[{i}]");
                validate_pod_affinity_term(term, &p, &mut errs);
            }
            for (i, w) in pa
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let p = format!("{p}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                check_weight(w.weight, &p, &mut errs);
                validate_pod_affinity_term(
                    &w.pod_affinity_term,
                    &format!("{p}.podAffinityTerm"),
                    &mut errs,
                );
            }
        }
    }
    errs
}

fn check_weight(weight: i32, path: &str, errs: &mut ErrorList) {
    if !(1..=100).contains(&weight) {
        errs.push(FieldError::invalid(
            format!("{path}.weight"),
            weight,
            "must be in the range 1-100",
        ));
    }
}

pub(crate) fn validate_node_selector_term(
    term: &NodeSelectorTerm,
    path: &str,
    errs: &mut ErrorList,
) {
    let check = |r: &NodeSelectorRequirement, p: String, errs: &mut ErrorList| {
        match r.operator.as_str() {
            "In" | "NotIn" if r.values.is_empty() => errs.push(
                FieldError::required(format!("{p}.values"))
                    .with_detail("must be specified when `operator` is 'In' or 'NotIn'"),
            ),
            "Exists" | "DoesNotExist" if !r.values.is_empty() => errs.push(FieldError::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "Gt" | "Lt" if r.values.len() != 1 || r.values[0].parse::<i64>().is_err() => errs.push(
                FieldError::required(format!("{p}.values"))
                    .with_detail("must be specified single value when `operator` is 'Lt' or 'Gt'"),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
            op => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                op,
                "not a valid selector operator",
            )),
        }
        p
    };
    for (i, r) in term.match_expressions.iter().enumerate() {
        let p = check(r, format!("{path}.matchExpressions[{i}]"), errs);
        invalid_each(errs, &format!("{p}.key"), &r.key, is_qualified_name(&r.key));
    }
    for (i, r) in term.match_fields.iter().enumerate() {
        let p = check(r, format!("{path}.matchFields[{i}]"), errs);
        if r.key != "metadata.name" {
            errs.push(FieldError::not_supported(
                format!("{p}.key"),
                &r.key,
                &["metadata.name"],
            ));
        }
    }
}

fn validate_pod_affinity_term(term: &PodAffinityTerm, path: &str, errs: &mut ErrorList) {
    if term.topology_key.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.topologyKey")).with_detail("can not be empty"),
        );
    } else {
        invalid_each(
            errs,
            &format!("{path}.topologyKey"),
            &term.topology_key,
            is_qualified_name(&term.topology_key),
        );
    }
    if let Some(sel) = &term.label_selector {
        errs.extend(validate_label_selector(
            sel,
            &format!("{path}.labelSelector"),
        ));
    }
    if let Some(sel) = &term.namespace_selector {
        errs.extend(validate_label_selector(
            sel,
            &format!("{path}.namespaceSelector"),
        ));
    }
    for (i, ns) in term.namespaces.iter().enumerate() {
        invalid_each(
            errs,
            &format!("{path}.namespaces[{i}]"),
            ns,
            is_dns1123_label(ns),
        );
    }
}

fn validate_toleration(t: &Toleration, p: &str, errs: &mut ErrorList) {
    if !t.key.is_empty() {
        invalid_each(errs, &format!("{p}.key"), &t.key, is_qualified_name(&t.key));
    }
    if t.key.is_empty() && t.operator != "Exists" {
        errs.push(FieldError::invalid(
            format!("{p}.operator"),
            &t.operator,
            "operator must be Exists when `key` is empty, which means \"match all values and all \
             keys\"",
        ));
    }
    if t.toleration_seconds.is_some() && t.effect != "NoExecute" {
        errs.push(FieldError::invalid(
            format!("{p}.effect"),
            &t.effect,
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        ));
    }
    match t.operator.as_str() {
        "" | "Equal" => invalid_each(
            errs,
            &format!("{p}.value"),
            &t.value,
            is_valid_label_value(&t.value),
        ),
        "Exists" => {
            if !t.value.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{p}.operator"),
                    &t.value,
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        op => errs.push(FieldError::not_supported(
            format!("{p}.operator"),
            op,
            &["Equal", "Exists"],
        )),
    }
    check_taint_effect(errs, &format!("{p}.effect"), &t.effect, true);
}

fn check_taint_effect(errs: &mut ErrorList, path: &str, effect: &str, allow_empty: bool) {
    const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
    if effect.is_empty() {
        if !allow_empty {
            errs.push(FieldError::required(path));
        }
    } else if !EFFECTS.contains(&effect) {
        errs.push(FieldError::not_supported(path, effect, EFFECTS));
    }
}

/// Checks the volumes and returns their names.
fn validate_volumes<'a>(
    volumes: &'a [Volume],
    path: &str,
    errs: &mut ErrorList,
) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        if v.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        } else {
            invalid_each(
                errs,
                &format!("{p}.name"),
                &v.name,
                is_dns1123_label(&v.name),
            );
            if !names.insert(v.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), &v.name));
            }
        }
        match v.sources()[..] {
            [] => errs.push(FieldError::required(&p).with_detail("must specify a volume type")),
            [_] => {}
            [_, second, ..] => errs.push(FieldError::forbidden(
                format!("{p}.{second}"),
                "may not specify more than 1 volume type",
            )),
        }
        let mut required = |set: bool, field: &str, value: &str| {
            if set && value.is_empty() {
                errs.push(FieldError::required(format!("{p}.{field}")));
            }
        };
        if let Some(h) = &v.host_path {
            required(true, "hostPath.path", &h.path);
        }
        if let Some(c) = &v.config_map {
            required(true, "configMap.name", &c.name);
        }
        if let Some(s) = &v.secret {
            required(true, "secret.secretName", &s.secret_name);
        }
        if let Some(c) = &v.persistent_volume_claim {
            required(true, "persistentVolumeClaim.claimName", &c.claim_name);
        }
        if let Some(e) = &v.ephemeral {
            let template = &e["volumeClaimTemplate"];
            let tp = format!("{p}.ephemeral.volumeClaimTemplate");
            if template.is_object() {
                match crate::meta::from_json::<crate::core_v1::PersistentVolumeClaimSpec>(
                    template["spec"].clone(),
                ) {
                    Ok(spec) => errs.extend(super::validate_claim_template_spec(
                        &spec,
                        &format!("{tp}.spec"),
                    )),
                    Err(err) => errs.push(FieldError::invalid(
                        format!("{tp}.spec"),
                        super::BadValue::Omitted,
                        err.to_string(),
                    )),
                }
            } else {
                errs.push(FieldError::required(tp));
            }
        }
        if let Some(c) = &v.config_map {
            check_file_mode(errs, &format!("{p}.configMap.defaultMode"), c.default_mode);
            for (j, item) in c.items.iter().enumerate() {
                validate_key_to_path(item, &format!("{p}.configMap.items[{j}]"), errs);
            }
        }
        if let Some(s) = &v.secret {
            check_file_mode(errs, &format!("{p}.secret.defaultMode"), s.default_mode);
            for (j, item) in s.items.iter().enumerate() {
                validate_key_to_path(item, &format!("{p}.secret.items[{j}]"), errs);
            }
        }
        if let Some(d) = &v.downward_api {
            let dp = format!("{p}.downwardAPI");
            check_file_mode(errs, &format!("{dp}.defaultMode"), d.default_mode);
            for item in &d.items {
                // Kubernetes names the source, not the item, in these paths.
                validate_downward_api_file(item, &dp, errs);
            }
        }
        if let Some(projected) = &v.projected {
            validate_projected(projected, &format!("{p}.projected"), errs);
        }
    }
    names
}

/// kube-apiserver's message for a file mode out of range.
const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn check_file_mode(errs: &mut ErrorList, path: &str, mode: Option<i32>) {
    if let Some(mode) = mode
        && !(0..=0o777).contains(&mode)
    {
        errs.push(FieldError::invalid(path, mode, FILE_MODE_MSG));
    }
}

/// A path inside a volume: relative, without `..` elements and not starting with `..` (the
/// names the atomic writer keeps for itself: `..data`, `..<timestamp>`).
fn validate_local_non_reserved_path(target: &str, path: &str, errs: &mut ErrorList) {
    let before = errs.len();
    if target.starts_with('/') {
        errs.push(FieldError::invalid(path, target, "must be a relative path"));
    }
    if target.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid(path, target, "must not contain '..'"));
    }
    // Not said twice: a `..` element already was.
    if target.starts_with("..") && errs.len() == before {
        errs.push(FieldError::invalid(
            path,
            target,
            "must not start with '..'",
        ));
    }
}

fn validate_key_to_path(item: &crate::core_v1::KeyToPath, p: &str, errs: &mut ErrorList) {
    if item.key.is_empty() {
        errs.push(FieldError::required(format!("{p}.key")));
    }
    if item.path.is_empty() {
        errs.push(FieldError::required(format!("{p}.path")));
    }
    validate_local_non_reserved_path(&item.path, &format!("{p}.path"), errs);
    check_file_mode(errs, &format!("{p}.mode"), item.mode);
}

/// The pod fields a downward API file may hold (the env's `spec.*`/`status.*` are env-only).
const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

fn validate_downward_api_file(
    file: &crate::core_v1::DownwardApiVolumeFile,
    p: &str,
    errs: &mut ErrorList,
) {
    if file.path.is_empty() {
        errs.push(FieldError::required(format!("{p}.path")));
    }
    validate_local_non_reserved_path(&file.path, &format!("{p}.path"), errs);
    match (&file.field_ref, &file.resource_field_ref) {
        (Some(f), resource) => {
            let fp = format!("{p}.fieldRef.fieldPath");
            let bracketed = ["metadata.labels['", "metadata.annotations['"]
                .iter()
                .any(|prefix| f.field_path.starts_with(prefix) && f.field_path.ends_with("']"));
            if f.field_path.is_empty() {
                errs.push(FieldError::required(fp));
            } else if !bracketed && !VOLUME_FIELD_PATHS.contains(&f.field_path.as_str()) {
                errs.push(FieldError::not_supported(
                    fp,
                    &f.field_path,
                    VOLUME_FIELD_PATHS,
                ));
            }
            if resource.is_some() {
                errs.push(FieldError::invalid(
                    p,
                    "resource",
                    "fieldRef and resourceFieldRef can not be specified simultaneously",
                ));
            }
        }
        (None, Some(_)) => {}
        (None, None) => errs.push(
            FieldError::required(p).with_detail("one of fieldRef and resourceFieldRef is required"),
        ),
    }
    check_file_mode(errs, &format!("{p}.mode"), file.mode);
}

/// A projected volume, as kube-apiserver's `validateProjectedVolumeSource`: each source sets
/// one kind, no two files share a path, tokens live 10 minutes to 2^32 seconds.
fn validate_projected(
    projected: &crate::core_v1::ProjectedVolumeSource,
    p: &str,
    errs: &mut ErrorList,
) {
    check_file_mode(errs, &format!("{p}.defaultMode"), projected.default_mode);
    let mut paths = BTreeSet::new();
    // A second file at a path: Kubernetes reports it on the volume, with the source's name.
    let mut claim = |errs: &mut ErrorList, path: &str, value: &str| {
        if !path.is_empty() && !paths.insert(path.to_owned()) {
            errs.push(FieldError::invalid(p, value, "conflicting duplicate paths"));
        }
    };
    for (i, source) in projected.sources.iter().enumerate() {
        let sp = format!("{p}.sources[{i}]");
        let mut kinds = 0;
        let named_items = [
            source
                .secret
                .as_ref()
                .map(|s| ("secret", &s.name, &s.items)),
            source
                .config_map
                .as_ref()
                .map(|c| ("configMap", &c.name, &c.items)),
        ];
        for (kind, name, items) in named_items.into_iter().flatten() {
            kinds += 1;
            if name.is_empty() {
                errs.push(FieldError::required(format!("{sp}.{kind}.name")));
            }
            for (j, item) in items.iter().enumerate() {
                validate_key_to_path(item, &format!("{sp}.{kind}.items[{j}]"), errs);
                claim(errs, &item.path, name);
            }
        }
        if let Some(d) = &source.downward_api {
            kinds += 1;
            for item in &d.items {
                validate_downward_api_file(item, &format!("{sp}.downwardAPI"), errs);
                claim(errs, &item.path, &item.path);
            }
        }
        if let Some(t) = &source.service_account_token {
            kinds += 1;
            let ep = format!("{sp}.serviceAccountToken.expirationSeconds");
            let seconds = t.expiration_seconds.unwrap_or(3600);
            if seconds < 600 {
                errs.push(FieldError::invalid(
                    &ep,
                    seconds,
                    "may not specify a duration less than 10 minutes",
                ));
            }
            if seconds > 1 << 32 {
                errs.push(FieldError::invalid(
                    &ep,
                    seconds,
                    "may not specify a duration larger than 2^32 seconds",
                ));
            }
            // Kubernetes reports the token's path on the volume, not on the source.
            if t.path.is_empty() {
                errs.push(FieldError::required(format!("{p}.path")));
            } else {
                validate_local_non_reserved_path(&t.path, &format!("{p}.path"), errs);
            }
        }
        if source.cluster_trust_bundle.is_some() {
            kinds += 1;
        }
        if kinds > 1 {
            errs.push(FieldError::forbidden(
                sp,
                "may not specify more than 1 volume type",
            ));
        }
    }
}

fn validate_container(
    c: &Container,
    p: &str,
    init: bool,
    host_network: bool,
    volumes: &BTreeSet<&str>,
    errs: &mut ErrorList,
) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{p}.name")));
    } else {
        invalid_each(
            errs,
            &format!("{p}.name"),
            &c.name,
            is_dns1123_label(&c.name),
        );
    }
    if c.image.trim().is_empty() {
        errs.push(FieldError::required(format!("{p}.image")));
    }
    const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
    if !c.image_pull_policy.is_empty() && !PULL_POLICIES.contains(&c.image_pull_policy.as_str()) {
        errs.push(FieldError::not_supported(
            format!("{p}.imagePullPolicy"),
            &c.image_pull_policy,
            PULL_POLICIES,
        ));
    }
    match (&c.restart_policy, init) {
        (None, _) => {}
        (Some(rp), true) if rp == "Always" => {}
        (Some(rp), true) => errs.push(FieldError::not_supported(
            format!("{p}.restartPolicy"),
            rp,
            &["Always"],
        )),
        (Some(_), false) => errs.push(FieldError::forbidden(
            format!("{p}.restartPolicy"),
            "may not be set for non-init containers",
        )),
    }
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");

    let mut port_names = BTreeSet::new();
    for (j, port) in c.ports.iter().enumerate() {
        let pp = format!("{p}.ports[{j}]");
        if !port.name.is_empty() {
            invalid_each(
                errs,
                &format!("{pp}.name"),
                &port.name,
                is_valid_port_name(&port.name),
            );
            if !port_names.insert(port.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &port.name));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(format!("{pp}.containerPort")));
        } else {
            port_num(errs, &format!("{pp}.containerPort"), port.container_port);
        }
        if port.host_port != 0 {
            port_num(errs, &format!("{pp}.hostPort"), port.host_port);
            if host_network && port.host_port != port.container_port {
                errs.push(FieldError::invalid(
                    format!("{pp}.hostPort"),
                    port.host_port,
                    "must match `containerPort` when `hostNetwork` is true",
                ));
            }
        }
        check_protocol(errs, &format!("{pp}.protocol"), &port.protocol);
    }

    for (j, env) in c.env.iter().enumerate() {
        let ep = format!("{p}.env[{j}]");
        if env.name.is_empty() {
            errs.push(FieldError::required(format!("{ep}.name")));
        } else if env.name.contains('=') || !env.name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            errs.push(FieldError::invalid(
                format!("{ep}.name"),
                &env.name,
                "a valid environment variable name must consist only of printable ASCII \
                 characters other than '='",
            ));
        }
        let Some(from) = &env.value_from else {
            continue;
        };
        let vp = format!("{ep}.valueFrom");
        let sources = [
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources == 0 {
            errs.push(FieldError::invalid(
                &vp,
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or \
                 `secretKeyRef`",
            ));
        } else if sources > 1 {
            errs.push(FieldError::invalid(
                &vp,
                "",
                "may not have more than one field specified at a time",
            ));
        }
        if !env.value.is_empty() {
            errs.push(FieldError::invalid(
                &vp,
                "",
                "may not be specified when `value` is not empty",
            ));
        }
        if let Some(f) = &from.field_ref {
            validate_env_field_path(&f.field_path, &format!("{vp}.fieldRef.fieldPath"), errs);
        }
        if let Some(r) = &from.resource_field_ref {
            const RESOURCES: &[&str] = &[
                "limits.cpu",
                "limits.ephemeral-storage",
                "limits.memory",
                "requests.cpu",
                "requests.ephemeral-storage",
                "requests.memory",
            ];
            let rp = format!("{vp}.resourceFieldRef.resource");
            if r.resource.is_empty() {
                errs.push(FieldError::required(rp));
            } else if !RESOURCES.contains(&r.resource.as_str()) {
                errs.push(FieldError::not_supported(rp, &r.resource, RESOURCES));
            }
        }
        for (field, key_ref) in [
            ("configMapKeyRef", &from.config_map_key_ref),
            ("secretKeyRef", &from.secret_key_ref),
        ] {
            if let Some(k) = key_ref {
                if k.key.is_empty() {
                    errs.push(FieldError::required(format!("{vp}.{field}.key")));
                } else {
                    invalid_each(
                        errs,
                        &format!("{vp}.{field}.key"),
                        &k.key,
                        is_config_map_key(&k.key),
                    );
                }
                if k.name.is_empty() {
                    errs.push(FieldError::required(format!("{vp}.{field}.name")));
                }
            }
        }
    }
    for (j, from) in c.env_from.iter().enumerate() {
        let fp = format!("{p}.envFrom[{j}]");
        match (&from.config_map_ref, &from.secret_ref) {
            (None, None) => errs.push(FieldError::invalid(
                &fp,
                "",
                "must specify one of: `configMapRef` or `secretRef`",
            )),
            (Some(_), Some(_)) => errs.push(FieldError::invalid(
                &fp,
                "",
                "may not have more than one field specified at a time",
            )),
            (Some(r), None) | (None, Some(r)) => {
                if r.name.is_empty() {
                    let field = if from.config_map_ref.is_some() {
                        "configMapRef"
                    } else {
                        "secretRef"
                    };
                    errs.push(FieldError::required(format!("{fp}.{field}.name")));
                }
            }
        }
    }

    let mut mount_paths = BTreeSet::new();
    for (j, m) in c.volume_mounts.iter().enumerate() {
        let mp = format!("{p}.volumeMounts[{j}]");
        if m.name.is_empty() {
            errs.push(FieldError::required(format!("{mp}.name")));
        } else if !volumes.contains(m.name.as_str()) {
            errs.push(FieldError::not_found(format!("{mp}.name"), &m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mp}.mountPath")));
        } else if !mount_paths.insert(m.mount_path.as_str()) {
            errs.push(FieldError::invalid(
                format!("{mp}.mountPath"),
                &m.mount_path,
                "must be unique",
            ));
        }
        if m.sub_path.split('/').any(|s| s == "..") || m.sub_path.starts_with('/') {
            errs.push(FieldError::invalid(
                format!("{mp}.subPath"),
                &m.sub_path,
                "must be a relative path without '..'",
            ));
        }
    }

    for (field, probe, liveness_like) in [
        ("livenessProbe", &c.liveness_probe, true),
        ("readinessProbe", &c.readiness_probe, false),
        ("startupProbe", &c.startup_probe, true),
    ] {
        let Some(probe) = probe else { continue };
        let pp = format!("{p}.{field}");
        if init && !sidecar {
            errs.push(FieldError::forbidden(
                &pp,
                "may not be set for init containers without restartPolicy=Always",
            ));
            continue;
        }
        validate_probe(probe, &pp, liveness_like, errs);
    }
    if let Some(lc) = &c.lifecycle {
        for (field, handler) in [("postStart", &lc.post_start), ("preStop", &lc.pre_stop)] {
            if let Some(h) = handler {
                validate_lifecycle_handler(h, &format!("{p}.lifecycle.{field}"), errs);
            }
        }
    }

    if let Some(res) = &c.resources {
        let rp = format!("{p}.resources");
        for (field, list) in [("limits", &res.limits), ("requests", &res.requests)] {
            for (name, q) in list {
                let qp = format!("{rp}.{field}[{name}]");
                invalid_each(errs, &qp, name, is_qualified_name(name));
                match q.validate() {
                    Err(e) => errs.push(FieldError::invalid(&qp, q.as_str(), e.to_string())),
                    Ok(()) if q.as_str().starts_with('-') && q.milli_value() != Ok(0) => errs.push(
                        FieldError::invalid(&qp, q.as_str(), "must be greater than or equal to 0"),
                    ),
                    Ok(()) => {}
                }
            }
        }
        for (name, req) in &res.requests {
            let Some(limit) = res.limits.get(name) else {
                continue;
            };
            let exceeds = match (req.milli_value(), limit.milli_value()) {
                (Ok(r), Ok(l)) => r > l,
                _ => matches!((req.value(), limit.value()), (Ok(r), Ok(l)) if r > l),
            };
            if exceeds {
                errs.push(FieldError::invalid(
                    format!("{rp}.requests[{name}]"),
                    req.as_str(),
                    format!("must be less than or equal to {name} limit of {limit}"),
                ));
            }
        }
    }
}

fn validate_env_field_path(path: &str, p: &str, errs: &mut ErrorList) {
    const FIELDS: &[&str] = &[
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    ];
    let subscripted = ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .any(|prefix| path.starts_with(prefix) && path.ends_with("']"));
    if path.is_empty() {
        errs.push(FieldError::required(p));
    } else if !(FIELDS.contains(&path)
        || subscripted
        || path == "metadata.labels"
        || path == "metadata.annotations")
    {
        errs.push(FieldError::not_supported(p, path, FIELDS));
    }
}

/// Counts the handlers that are set and reports none or several.
fn check_handlers(set: &[(&str, bool)], path: &str, errs: &mut ErrorList) {
    let mut found = set.iter().filter(|(_, s)| *s).map(|(n, _)| *n);
    match (found.next(), found.next()) {
        (None, _) => {
            errs.push(FieldError::required(path).with_detail("must specify a handler type"))
        }
        (Some(_), Some(second)) => errs.push(FieldError::forbidden(
            format!("{path}.{second}"),
            "may not specify more than 1 handler type",
        )),
        _ => {}
    }
}

fn validate_probe(probe: &Probe, path: &str, liveness_like: bool, errs: &mut ErrorList) {
    check_handlers(
        &[
            ("exec", probe.exec.is_some()),
            ("httpGet", probe.http_get.is_some()),
            ("tcpSocket", probe.tcp_socket.is_some()),
            ("grpc", probe.grpc.is_some()),
        ],
        path,
        errs,
    );
    validate_actions(
        probe.exec.as_ref().map(|e| &e.command),
        probe.http_get.as_ref(),
        probe.tcp_socket.as_ref(),
        path,
        errs,
    );
    if let Some(g) = &probe.grpc {
        port_num(errs, &format!("{path}.grpc.port"), g.port);
    }
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        non_negative(errs, &format!("{path}.{field}"), value.into());
    }
    if liveness_like && probe.success_threshold > 1 {
        errs.push(FieldError::invalid(
            format!("{path}.successThreshold"),
            probe.success_threshold,
            "must be 1",
        ));
    }
    if let Some(t) = probe.termination_grace_period_seconds
        && t <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            t,
            "must be greater than 0",
        ));
    }
}

fn validate_lifecycle_handler(h: &LifecycleHandler, path: &str, errs: &mut ErrorList) {
    check_handlers(
        &[
            ("exec", h.exec.is_some()),
            ("httpGet", h.http_get.is_some()),
            ("tcpSocket", h.tcp_socket.is_some()),
            ("sleep", h.sleep.is_some()),
        ],
        path,
        errs,
    );
    validate_actions(
        h.exec.as_ref().map(|e| &e.command),
        h.http_get.as_ref(),
        h.tcp_socket.as_ref(),
        path,
        errs,
    );
    if let Some(s) = &h.sleep {
        non_negative(errs, &format!("{path}.sleep.seconds"), s.seconds);
    }
}

fn validate_actions(
    exec: Option<&Vec<String>>,
    http: Option<&crate::core_v1::HttpGetAction>,
    tcp: Option<&crate::core_v1::TcpSocketAction>,
    path: &str,
    errs: &mut ErrorList,
) {
    if exec.is_some_and(Vec::is_empty) {
        errs.push(FieldError::required(format!("{path}.exec.command")));
    }
    if let Some(h) = http {
        port_num_or_name(errs, &format!("{path}.httpGet.port"), &h.port);
        if !h.scheme.is_empty() && h.scheme != "HTTP" && h.scheme != "HTTPS" {
            errs.push(FieldError::not_supported(
                format!("{path}.httpGet.scheme"),
                &h.scheme,
                &["HTTP", "HTTPS"],
            ));
        }
    }
    if let Some(t) = tcp {
        port_num_or_name(errs, &format!("{path}.tcpSocket.port"), &t.port);
    }
}

// ---------------------------------------------------------------------------------------------
// Service

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
/// Node ports are allocated from this range (the API server's default `--service-node-port-range`).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// A Service: name a DNS-1035 label, ports, type rules, cluster IPs, traffic policies.
pub fn validate_service(svc: &Service) -> ErrorList {
    let mut errs = validate_object_meta(&svc.metadata, true, NameRule::Dns1035Label);
    let spec = &svc.spec;
    let type_ = if spec.type_.is_empty() {
        "ClusterIP"
    } else {
        spec.type_.as_str()
    };
    if !SERVICE_TYPES.contains(&type_) {
        errs.push(FieldError::not_supported("spec.type", type_, SERVICE_TYPES));
    }
    let headless = spec.cluster_ip == "None";
    let external_name = type_ == "ExternalName";

    if external_name {
        let name = spec.external_name.trim_end_matches('.');
        if spec.external_name.is_empty() {
            errs.push(FieldError::required("spec.externalName"));
        } else {
            invalid_each(
                &mut errs,
                "spec.externalName",
                &spec.external_name,
                is_dns1123_subdomain(name),
            );
        }
        if !spec.cluster_ips.is_empty() {
            errs.push(FieldError::forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        } else if !spec.cluster_ip.is_empty() {
            errs.push(FieldError::forbidden(
                "spec.clusterIP",
                "may not be set for ExternalName services",
            ));
        }
    }

    if spec.ports.is_empty() && !headless && !external_name {
        errs.push(FieldError::required("spec.ports"));
    }
    let mut names = BTreeSet::new();
    let mut port_protocols = BTreeSet::new();
    let many = spec.ports.len() > 1;
    for (i, port) in spec.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if port.name.is_empty() {
            if many {
                errs.push(FieldError::required(format!("{p}.name")));
            }
        } else {
            invalid_each(
                &mut errs,
                &format!("{p}.name"),
                &port.name,
                is_dns1123_label(&port.name),
            );
            if !names.insert(port.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), &port.name));
            }
        }
        port_num(&mut errs, &format!("{p}.port"), port.port);
        check_protocol(&mut errs, &format!("{p}.protocol"), &port.protocol);
        let protocol = if port.protocol.is_empty() {
            "TCP"
        } else {
            &port.protocol
        };
        if !port_protocols.insert((port.port, protocol)) {
            errs.push(FieldError::duplicate(
                &p,
                BadValue::Raw(format!(
                    "core.ServicePort{{Port:{}, Protocol:{protocol:?}}}",
                    port.port
                )),
            ));
        }
        if let Some(target) = &port.target_port {
            port_num_or_name(&mut errs, &format!("{p}.targetPort"), target);
        }
        if port.node_port != 0 {
            if matches!(type_, "ClusterIP" | "ExternalName") {
                errs.push(FieldError::forbidden(
                    format!("{p}.nodePort"),
                    format!("may not be used when `type` is '{type_}'"),
                ));
            } else if !NODE_PORT_RANGE.contains(&port.node_port) {
                errs.push(FieldError::invalid(
                    format!("{p}.nodePort"),
                    port.node_port,
                    format!(
                        "provided port is not in the valid range. The range of valid ports is \
                         {}-{}",
                        NODE_PORT_RANGE.start(),
                        NODE_PORT_RANGE.end()
                    ),
                ));
            }
        }
    }

    errs.extend(validate_labels(&spec.selector, "spec.selector"));

    if !spec.cluster_ip.is_empty() && !headless {
        check_ip(&mut errs, "spec.clusterIP", &spec.cluster_ip);
    }
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        if !(i == 0 && ip == "None") {
            check_ip(&mut errs, &format!("spec.clusterIPs[{i}]"), ip);
        }
    }
    if let Some(first) = spec.cluster_ips.first()
        && !spec.cluster_ip.is_empty()
        && *first != spec.cluster_ip
    {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            go_strings(&spec.cluster_ips),
            "first value must match `clusterIP`",
        ));
    }
    if headless && matches!(type_, "NodePort" | "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            "None",
            format!("may not be set to 'None' for {type_} services"),
        ));
    }
    for (i, ip) in spec.external_ips.iter().enumerate() {
        check_ip(&mut errs, &format!("spec.externalIPs[{i}]"), ip);
    }
    if !spec.load_balancer_ip.is_empty() {
        check_ip(&mut errs, "spec.loadBalancerIP", &spec.load_balancer_ip);
    }
    for (i, cidr) in spec.load_balancer_source_ranges.iter().enumerate() {
        check_cidr(
            &mut errs,
            &format!("spec.loadBalancerSourceRanges[{i}]"),
            cidr,
        );
    }

    const POLICIES: &[&str] = &["Cluster", "Local"];
    if !spec.external_traffic_policy.is_empty() {
        if !matches!(type_, "NodePort" | "LoadBalancer") {
            errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                &spec.external_traffic_policy,
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            ));
        } else if !POLICIES.contains(&spec.external_traffic_policy.as_str()) {
            errs.push(FieldError::not_supported(
                "spec.externalTrafficPolicy",
                &spec.external_traffic_policy,
                POLICIES,
            ));
        }
    }
    if let Some(p) = &spec.internal_traffic_policy
        && !POLICIES.contains(&p.as_str())
    {
        errs.push(FieldError::not_supported(
            "spec.internalTrafficPolicy",
            p,
            POLICIES,
        ));
    }

    match spec.session_affinity.as_str() {
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(t) = timeout
                && !(1..=86400).contains(&t)
            {
                errs.push(FieldError::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        "" | "None" => {
            if spec
                .session_affinity_config
                .as_ref()
                .is_some_and(|c| c.client_ip.is_some())
            {
                errs.push(FieldError::invalid(
                    "spec.sessionAffinityConfig",
                    BadValue::Omitted,
                    "must not be set when session affinity is None",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            other,
            &["ClientIP", "None"],
        )),
    }
    errs
}

/// A Service update: `spec.clusterIP` may not change once set (an empty new value keeps the
/// old one), except to or from `ExternalName`.
pub fn validate_update_service(old: &Service, new: &Service) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_service(new));
    let external = |s: &Service| s.spec.type_ == "ExternalName";
    if !external(old)
        && !external(new)
        && !old.spec.cluster_ip.is_empty()
        && !new.spec.cluster_ip.is_empty()
    {
        immutable(
            &mut errs,
            "spec.clusterIP",
            &old.spec.cluster_ip,
            &new.spec.cluster_ip,
            || (&new.spec.cluster_ip).into(),
        );
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// Endpoints: addresses are IPs, ports valid and named when there are several.
pub fn validate_endpoints(ep: &Endpoints) -> ErrorList {
    let mut errs = validate_object_meta(&ep.metadata, true, NameRule::Subdomain);
    for (i, subset) in ep.subsets.iter().enumerate() {
        let p = format!("subsets[{i}]");
        for (field, list) in [
            ("addresses", &subset.addresses),
            ("notReadyAddresses", &subset.not_ready_addresses),
        ] {
            for (j, a) in list.iter().enumerate() {
                check_ip(&mut errs, &format!("{p}.{field}[{j}].ip"), &a.ip);
                if let Some(node) = &a.node_name {
                    invalid_each(
                        &mut errs,
                        &format!("{p}.{field}[{j}].nodeName"),
                        node,
                        is_dns1123_subdomain(node),
                    );
                }
            }
        }
        let many = subset.ports.len() > 1;
        for (j, port) in subset.ports.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if port.name.is_empty() {
                if many {
                    errs.push(FieldError::required(format!("{pp}.name")));
                }
            } else {
                invalid_each(
                    &mut errs,
                    &format!("{pp}.name"),
                    &port.name,
                    is_dns1123_label(&port.name),
                );
            }
            port_num(&mut errs, &format!("{pp}.port"), port.port);
            check_protocol(&mut errs, &format!("{pp}.protocol"), &port.protocol);
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// ConfigMap and Secret

fn validate_data_keys<'a>(
    keys: impl Iterator<Item = (&'static str, &'a String)>,
    errs: &mut ErrorList,
) {
    let mut seen = BTreeSet::new();
    for (field, key) in keys {
        let p = format!("{field}[{key}]");
        invalid_each(errs, &p, key, is_config_map_key(key));
        if !seen.insert(key) {
            errs.push(FieldError::invalid(
                p,
                key,
                "duplicate of key present in binaryData",
            ));
        }
    }
}

/// A ConfigMap: keys are config keys, not in both `data` and `binaryData`, 1 MiB in total.
pub fn validate_config_map(cm: &ConfigMap) -> ErrorList {
    let mut errs = validate_object_meta(&cm.metadata, true, NameRule::Subdomain);
    validate_data_keys(
        cm.binary_data
            .keys()
            .map(|k| ("binaryData", k))
            .chain(cm.data.keys().map(|k| ("data", k))),
        &mut errs,
    );
    for (k, v) in &cm.binary_data {
        if base64::decode(v).is_none() {
            errs.push(FieldError::invalid(
                format!("binaryData[{k}]"),
                BadValue::Omitted,
                "must be base64-encoded",
            ));
        }
    }
    let size: usize = cm
        .data
        .iter()
        .chain(&cm.binary_data)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if size > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("", MAX_SECRET_SIZE));
    }
    errs
}

fn check_immutable_data<T: PartialEq>(
    errs: &mut ErrorList,
    old_immutable: Option<bool>,
    new_immutable: Option<bool>,
    old_data: &T,
    new_data: &T,
) {
    if old_immutable == Some(true) {
        if new_immutable != Some(true) {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        if old_data != new_data {
            errs.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

/// A ConfigMap update: nothing may change once `immutable` is true.
pub fn validate_update_config_map(old: &ConfigMap, new: &ConfigMap) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_config_map(new));
    check_immutable_data(
        &mut errs,
        old.immutable,
        new.immutable,
        &(&old.data, &old.binary_data),
        &(&new.data, &new.binary_data),
    );
    errs
}

/// A Secret: keys, base64 values, the keys its `type` requires, 1 MiB in total.
pub fn validate_secret(secret: &Secret) -> ErrorList {
    let mut errs = validate_object_meta(&secret.metadata, true, NameRule::Subdomain);
    validate_data_keys(
        secret.data.keys().map(|k| ("data", k)).chain(
            secret
                .string_data
                .keys()
                .filter(|k| !secret.data.contains_key(*k))
                .map(|k| ("stringData", k)),
        ),
        &mut errs,
    );
    for (k, v) in &secret.data {
        if base64::decode(v).is_none() {
            errs.push(FieldError::invalid(
                format!("data[{k}]"),
                BadValue::Raw("<secret contents redacted>".into()),
                "illegal base64 data",
            ));
        }
    }
    let has = |k: &str| secret.data.contains_key(k) || secret.string_data.contains_key(k);
    let required: &[&str] = match secret.type_.as_str() {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for key in required.iter().filter(|k| !has(k)) {
        errs.push(FieldError::required(format!("data[{key}]")));
    }
    if secret.type_ == "kubernetes.io/service-account-token"
        && !secret
            .metadata
            .annotations
            .contains_key("kubernetes.io/service-account.name")
    {
        errs.push(FieldError::required(
            "metadata.annotations[kubernetes.io/service-account.name]",
        ));
    }
    let size: usize = secret
        .data
        .iter()
        .map(|(k, v)| k.len() + v.len() / 4 * 3)
        .chain(secret.string_data.iter().map(|(k, v)| k.len() + v.len()))
        .sum();
    if size > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
    }
    errs
}

/// A Secret update: `type` is immutable, and so is everything once `immutable` is true.
pub fn validate_update_secret(old: &Secret, new: &Secret) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_secret(new));
    let type_of = |s: &Secret| {
        if s.type_.is_empty() {
            "Opaque".to_owned()
        } else {
            s.type_.clone()
        }
    };
    immutable(&mut errs, "type", &type_of(old), &type_of(new), || {
        type_of(new).into()
    });
    check_immutable_data(
        &mut errs,
        old.immutable,
        new.immutable,
        &old.data,
        &new.data,
    );
    errs
}

// ---------------------------------------------------------------------------------------------
// Node, Event, ServiceAccount

/// A Node: pod CIDRs and taints.
pub fn validate_node(node: &Node) -> ErrorList {
    let mut errs = validate_object_meta(&node.metadata, false, NameRule::Subdomain);
    if !node.spec.pod_cidr.is_empty() {
        check_cidr(&mut errs, "spec.podCIDR", &node.spec.pod_cidr);
    }
    for (i, cidr) in node.spec.pod_cidrs.iter().enumerate() {
        check_cidr(&mut errs, &format!("spec.podCIDRs[{i}]"), cidr);
    }
    let mut seen = BTreeSet::new();
    for (i, t) in node.spec.taints.iter().enumerate() {
        let p = format!("spec.taints[{i}]");
        if t.key.is_empty() {
            errs.push(FieldError::required(format!("{p}.key")));
        } else {
            invalid_each(
                &mut errs,
                &format!("{p}.key"),
                &t.key,
                is_qualified_name(&t.key),
            );
        }
        invalid_each(
            &mut errs,
            &format!("{p}.value"),
            &t.value,
            is_valid_label_value(&t.value),
        );
        check_taint_effect(&mut errs, &format!("{p}.effect"), &t.effect, false);
        if !seen.insert((&t.key, &t.effect)) {
            errs.push(
                FieldError::duplicate(
                    &p,
                    BadValue::Raw(format!(
                        "core.Taint{{Key:{:?}, Value:{:?}, Effect:{:?}}}",
                        t.key, t.value, t.effect
                    )),
                )
                .with_detail("taints must be unique by key and effect pair"),
            );
        }
    }
    errs
}

/// An Event: it must be about an object in its own namespace.
pub fn validate_event(event: &Event) -> ErrorList {
    let mut errs = validate_object_meta(&event.metadata, true, NameRule::Subdomain);
    let involved_ns = &event.involved_object.namespace;
    if !involved_ns.is_empty() && *involved_ns != event.metadata.namespace {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            involved_ns,
            "does not match event.namespace",
        ));
    }
    if !event.type_.is_empty() && event.type_ != "Normal" && event.type_ != "Warning" {
        errs.push(FieldError::not_supported(
            "type",
            &event.type_,
            &["Normal", "Warning"],
        ));
    }
    errs
}

/// A ServiceAccount: metadata only.
pub fn validate_service_account(sa: &ServiceAccount) -> ErrorList {
    validate_object_meta(&sa.metadata, true, NameRule::Subdomain)
}
