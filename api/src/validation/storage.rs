//! Validation of PersistentVolumes and PersistentVolumeClaims (`pkg/apis/core/validation`) and
//! of the `storage.k8s.io/v1` kinds (`pkg/apis/storage/validation`), with Kubernetes' messages.

use std::collections::BTreeMap;

use super::{
    BadValue, ErrorList, FieldError, NameRule, core::validate_node_selector_term, go_strings,
    invalid_each, is_dns1123_subdomain, is_qualified_name, validate_label_selector,
    validate_object_meta, validate_object_meta_update,
};
use crate::{
    core_v1::{
        PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, ResourceList,
        VolumeNodeAffinity,
    },
    quantity::Quantity,
    storage_v1::{CsiDriver, CsiNode, CsiStorageCapacity, StorageClass, VolumeAttachment},
};

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const PV_RECLAIM_POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
const CLASS_RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
const NOT_POSITIVE: &str = "must be greater than zero";

/// The bytes of a storage quantity (rounded up), or `None` if it does not parse.
pub fn storage_bytes(q: &Quantity) -> Option<i64> {
    q.value().ok()
}

fn access_modes(modes: &[String], path: &str, errs: &mut ErrorList) {
    for mode in modes {
        if !ACCESS_MODES.contains(&mode.as_str()) {
            errs.push(FieldError::not_supported(path, mode, ACCESS_MODES));
        }
    }
    if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
        errs.push(FieldError::forbidden(
            path,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn positive_quantity(q: &Quantity, path: &str, errs: &mut ErrorList) {
    match storage_bytes(q) {
        None => errs.push(FieldError::invalid(
            path,
            q.as_str(),
            "must be a valid quantity",
        )),
        Some(n) if n <= 0 => errs.push(FieldError::invalid(path, q.as_str(), NOT_POSITIVE)),
        Some(_) => {}
    }
}

fn volume_mode(mode: Option<&String>, path: &str, errs: &mut ErrorList) {
    if let Some(mode) = mode
        && !VOLUME_MODES.contains(&mode.as_str())
    {
        errs.push(FieldError::not_supported(path, mode, VOLUME_MODES));
    }
}

fn class_name(name: &str, path: &str, errs: &mut ErrorList) {
    if !name.is_empty() {
        invalid_each(errs, path, name, is_dns1123_subdomain(name));
    }
}

fn go_resource_list(list: &ResourceList) -> BadValue {
    let items: Vec<String> = list
        .iter()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str()))
        .collect();
    BadValue::Raw(format!("core.ResourceList{{{}}}", items.join(", ")))
}

/// `spec.nodeAffinity` of a volume: `required` must be set, with valid terms.
fn node_affinity(affinity: &VolumeNodeAffinity, path: &str, errs: &mut ErrorList) -> bool {
    let Some(required) = &affinity.required else {
        errs.push(FieldError::required(format!("{path}.required")));
        return false;
    };
    if required.node_selector_terms.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.required.nodeSelectorTerms"))
                .with_detail("must have at least one node selector term"),
        );
    }
    for (i, term) in required.node_selector_terms.iter().enumerate() {
        validate_node_selector_term(
            term,
            &format!("{path}.required.nodeSelectorTerms[{i}]"),
            errs,
        );
    }
    true
}

/// A new PersistentVolume (`ValidatePersistentVolume`).
pub fn validate_persistent_volume(pv: &PersistentVolume) -> ErrorList {
    let mut errs = validate_object_meta(&pv.metadata, false, NameRule::Subdomain);
    let spec = &pv.spec;
    if spec.access_modes.is_empty() {
        errs.push(FieldError::required("spec.accessModes"));
    }
    access_modes(&spec.access_modes, "spec.accessModes", &mut errs);
    if spec.capacity.is_empty() {
        errs.push(FieldError::required("spec.capacity"));
    }
    if !spec.capacity.contains_key("storage") || spec.capacity.len() > 1 {
        errs.push(FieldError::not_supported(
            "spec.capacity",
            go_resource_list(&spec.capacity),
            &["storage"],
        ));
    }
    for (name, q) in &spec.capacity {
        positive_quantity(q, &format!("spec.capacity[{name}]"), &mut errs);
    }
    let policy = &spec.persistent_volume_reclaim_policy;
    if !policy.is_empty() && !PV_RECLAIM_POLICIES.contains(&policy.as_str()) {
        errs.push(FieldError::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            policy,
            PV_RECLAIM_POLICIES,
        ));
    }
    class_name(&spec.storage_class_name, "spec.storageClassName", &mut errs);
    volume_mode(spec.volume_mode.as_ref(), "spec.volumeMode", &mut errs);
    let has_affinity = spec
        .node_affinity
        .as_ref()
        .is_some_and(|a| node_affinity(a, "spec.nodeAffinity", &mut errs));
    let sources = spec.sources();
    match sources.as_slice() {
        [] => errs.push(FieldError::required("spec").with_detail("must specify a volume type")),
        [_, more @ ..] => {
            for source in more {
                errs.push(FieldError::forbidden(
                    format!("spec.{source}"),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    if let Some(h) = &spec.host_path
        && h.path.is_empty()
    {
        errs.push(FieldError::required("spec.hostPath.path"));
    }
    if let Some(local) = &spec.local {
        if local.path.is_empty() {
            errs.push(FieldError::required("spec.local.path"));
        }
        if !has_affinity {
            errs.push(
                FieldError::required("spec.nodeAffinity")
                    .with_detail("Local volume requires node affinity"),
            );
        }
    }
    if let Some(csi) = &spec.csi {
        if csi.driver.is_empty() {
            errs.push(FieldError::required("spec.csi.driver"));
        } else {
            csi_driver_name(&csi.driver, "spec.csi.driver", &mut errs);
        }
        if csi.volume_handle.is_empty() {
            errs.push(FieldError::required("spec.csi.volumeHandle"));
        }
    }
    if let Some(claim) = &spec.claim_ref
        && claim.name.is_empty()
    {
        errs.push(FieldError::required("spec.claimRef.name"));
    }
    errs
}

/// An update of a PersistentVolume (`ValidatePersistentVolumeUpdate`): its source and volume
/// mode are fixed, and node affinity may only be added.
pub fn validate_update_persistent_volume(
    old: &PersistentVolume,
    new: &PersistentVolume,
) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_persistent_volume(new));
    let source = |pv: &PersistentVolume| {
        (
            pv.spec.host_path.clone(),
            pv.spec.local.clone(),
            pv.spec.csi.clone(),
            pv.spec
                .other_sources
                .iter()
                .filter(|(k, _)| {
                    crate::core_v1::OTHER_PERSISTENT_VOLUME_SOURCES.contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    if source(old) != source(new) {
        errs.push(FieldError::forbidden(
            "spec.persistentvolumesource",
            "spec.persistentvolumesource is immutable after creation",
        ));
    }
    if old.spec.volume_mode != new.spec.volume_mode {
        errs.push(FieldError::invalid(
            "volumeMode",
            new.spec.volume_mode.clone().unwrap_or_default(),
            "field is immutable",
        ));
    }
    if old.spec.node_affinity.is_some() && old.spec.node_affinity != new.spec.node_affinity {
        errs.push(FieldError::invalid(
            "nodeAffinity",
            BadValue::Raw("core.VolumeNodeAffinity{...}".into()),
            "field is immutable",
        ));
    }
    errs
}

fn validate_claim_spec(spec: &PersistentVolumeClaimSpec, path: &str, errs: &mut ErrorList) {
    if spec.access_modes.is_empty() {
        errs.push(
            FieldError::required(format!("{path}.accessModes"))
                .with_detail("at least 1 access mode is required"),
        );
    }
    if let Some(selector) = &spec.selector {
        errs.extend(validate_label_selector(
            selector,
            &format!("{path}.selector"),
        ));
    }
    access_modes(&spec.access_modes, &format!("{path}.accessModes"), errs);
    let storage_path = format!("{path}.resources[storage]");
    match spec.resources.requests.get("storage") {
        None => errs.push(FieldError::required(storage_path)),
        Some(q) => positive_quantity(q, &storage_path, errs),
    }
    if let Some(class) = &spec.storage_class_name {
        class_name(class, &format!("{path}.storageClassName"), errs);
    }
    volume_mode(
        spec.volume_mode.as_ref(),
        &format!("{path}.volumeMode"),
        errs,
    );
}

/// The spec of a claim template (a StatefulSet's `volumeClaimTemplates[i].spec`, an ephemeral
/// volume's `volumeClaimTemplate.spec`) at `path`.
pub fn validate_claim_template_spec(spec: &PersistentVolumeClaimSpec, path: &str) -> ErrorList {
    let mut errs = Vec::new();
    validate_claim_spec(spec, path, &mut errs);
    errs
}

/// A new PersistentVolumeClaim (`ValidatePersistentVolumeClaim`).
pub fn validate_persistent_volume_claim(pvc: &PersistentVolumeClaim) -> ErrorList {
    let mut errs = validate_object_meta(&pvc.metadata, true, NameRule::Subdomain);
    validate_claim_spec(&pvc.spec, "spec", &mut errs);
    errs
}

/// An update of a claim (`ValidatePersistentVolumeClaimUpdate`): the spec is immutable but for
/// `volumeName` (set once, by the binder), a class filled in where none was named, and, on a
/// bound claim, `resources.requests` (which may not shrink).
pub fn validate_update_persistent_volume_claim(
    old: &PersistentVolumeClaim,
    new: &PersistentVolumeClaim,
) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_persistent_volume_claim(new));
    let mut old_spec = old.spec.clone();
    let mut new_spec = new.spec.clone();
    if old_spec.volume_name.is_empty() {
        old_spec.volume_name.clone_from(&new_spec.volume_name);
    }
    // The retroactive default class: a claim that named none may get one, once.
    if old_spec.storage_class_name.is_none()
        && !old
            .metadata
            .annotations
            .contains_key(crate::core_v1::ANN_BETA_STORAGE_CLASS)
        && new_spec
            .storage_class_name
            .as_deref()
            .is_some_and(|c| !c.is_empty())
    {
        new_spec.storage_class_name = None;
    }
    let bound = new.status.as_ref().is_some_and(|s| s.phase == "Bound");
    if bound {
        match old_spec.resources.requests.get("storage") {
            Some(q) => {
                new_spec
                    .resources
                    .requests
                    .insert("storage".into(), q.clone());
            }
            None => {
                new_spec.resources.requests.remove("storage");
            }
        }
        new_spec
            .volume_attributes_class_name
            .clone_from(&old_spec.volume_attributes_class_name);
    }
    if old_spec != new_spec {
        errs.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and \
             volumeAttributesClassName for bound claims",
        ));
    }
    let size = |pvc: &PersistentVolumeClaim| pvc.request().and_then(storage_bytes);
    if let (Some(old_size), Some(new_size)) = (size(old), size(new)) {
        let status_size = old
            .status
            .as_ref()
            .and_then(|s| s.capacity.get("storage"))
            .and_then(storage_bytes);
        // RecoverVolumeExpansionFailure (beta, on): back down to what the volume has, not below.
        if new_size < old_size && status_size.is_none_or(|s| new_size <= s) {
            errs.push(FieldError::forbidden(
                "spec.resources.requests.storage",
                "field can not be less than status.capacity",
            ));
        }
    }
    if old.spec.volume_mode != new.spec.volume_mode {
        errs.push(FieldError::invalid(
            "volumeMode",
            new.spec.volume_mode.clone().unwrap_or_default(),
            "field is immutable",
        ));
    }
    errs
}

/// A CSI driver name (`ValidateCSIDriverName`): at most 63 characters, a DNS subdomain
/// (case-insensitively) of alphanumerics, `-` and `.`.
fn csi_driver_name(name: &str, path: &str, errs: &mut ErrorList) {
    if name.len() > 63 {
        errs.push(FieldError::too_long(path, 63));
    }
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        errs.push(FieldError::invalid(
            path,
            name,
            "a DNS-1123 subdomain must consist of lower case alphanumeric characters, '-' or \
             '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
             regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
}

/// A new StorageClass (`ValidateStorageClass`).
pub fn validate_storage_class(sc: &StorageClass) -> ErrorList {
    let mut errs = validate_object_meta(&sc.metadata, false, NameRule::Subdomain);
    if sc.provisioner.is_empty() {
        errs.push(FieldError::required("provisioner"));
    } else {
        invalid_each(
            &mut errs,
            "provisioner",
            &sc.provisioner,
            is_qualified_name(&sc.provisioner.to_ascii_lowercase()),
        );
    }
    const MAX_PARAMETERS: usize = 512;
    const MAX_PARAMETERS_SIZE: usize = 256 * 1024;
    if sc.parameters.len() > MAX_PARAMETERS {
        errs.push(FieldError::too_long("parameters", MAX_PARAMETERS));
    }
    let mut total = 0;
    for (k, v) in &sc.parameters {
        if k.is_empty() {
            errs.push(FieldError::invalid(
                "parameters",
                k,
                "field can not be empty.",
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_PARAMETERS_SIZE {
        errs.push(FieldError::too_long("parameters", MAX_PARAMETERS_SIZE));
    }
    if let Some(policy) = &sc.reclaim_policy
        && !policy.is_empty()
        && !CLASS_RECLAIM_POLICIES.contains(&policy.as_str())
    {
        errs.push(FieldError::not_supported(
            "reclaimPolicy",
            policy,
            CLASS_RECLAIM_POLICIES,
        ));
    }
    match &sc.volume_binding_mode {
        None => errs.push(FieldError::required("volumeBindingMode")),
        Some(mode) if !BINDING_MODES.contains(&mode.as_str()) => {
            errs.push(FieldError::not_supported(
                "volumeBindingMode",
                mode,
                BINDING_MODES,
            ));
        }
        Some(_) => {}
    }
    for (i, term) in sc.allowed_topologies.iter().enumerate() {
        let p = format!("allowedTopologies[{i}]");
        if term.match_label_expressions.is_empty() {
            errs.push(
                FieldError::required(format!("{p}.matchLabelExpressions"))
                    .with_detail("must have at least one label selector requirement"),
            );
        }
        for (j, r) in term.match_label_expressions.iter().enumerate() {
            let rp = format!("{p}.matchLabelExpressions[{j}]");
            invalid_each(
                &mut errs,
                &format!("{rp}.key"),
                &r.key,
                is_qualified_name(&r.key),
            );
            if r.values.is_empty() {
                errs.push(
                    FieldError::required(format!("{rp}.values"))
                        .with_detail("must specify as least one value"),
                );
            }
        }
    }
    errs
}

/// An update of a StorageClass (`ValidateStorageClassUpdate`): parameters, provisioner,
/// reclaim policy and binding mode are fixed.
pub fn validate_update_storage_class(old: &StorageClass, new: &StorageClass) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_storage_class(new));
    if old.parameters != new.parameters {
        errs.push(FieldError::forbidden(
            "parameters",
            "updates to parameters are forbidden.",
        ));
    }
    if old.provisioner != new.provisioner {
        errs.push(FieldError::forbidden(
            "provisioner",
            "updates to provisioner are forbidden.",
        ));
    }
    if old.reclaim_policy != new.reclaim_policy {
        errs.push(FieldError::forbidden(
            "reclaimPolicy",
            "updates to reclaimPolicy are forbidden.",
        ));
    }
    if old.volume_binding_mode != new.volume_binding_mode {
        errs.push(FieldError::invalid(
            "volumeBindingMode",
            new.volume_binding_mode.clone().unwrap_or_default(),
            "field is immutable",
        ));
    }
    errs
}

/// A new CSIDriver (`ValidateCSIDriver`).
pub fn validate_csi_driver(driver: &CsiDriver) -> ErrorList {
    let mut errs = validate_object_meta(&driver.metadata, false, NameRule::Subdomain);
    csi_driver_name(&driver.metadata.name, "name", &mut errs);
    let spec = &driver.spec;
    if spec.attach_required.is_none() {
        errs.push(FieldError::required("spec.attachRequired"));
    }
    if spec.pod_info_on_mount.is_none() {
        errs.push(FieldError::required("spec.podInfoOnMount"));
    }
    if spec.storage_capacity.is_none() {
        errs.push(FieldError::required("spec.storageCapacity"));
    }
    for (i, mode) in spec.volume_lifecycle_modes.iter().enumerate() {
        if mode != "Persistent" && mode != "Ephemeral" {
            errs.push(FieldError::not_supported(
                format!("spec.volumeLifecycleModes[{i}]"),
                mode,
                &["Ephemeral", "Persistent"],
            ));
        }
    }
    if let Some(policy) = &spec.fs_group_policy {
        const POLICIES: &[&str] = &["File", "None", "ReadWriteOnceWithFSType"];
        if !POLICIES.contains(&policy.as_str()) {
            errs.push(FieldError::not_supported(
                "spec.fsGroupPolicy",
                policy,
                POLICIES,
            ));
        }
    }
    errs
}

/// An update of a CSIDriver: `attachRequired`, `volumeLifecycleModes` and `fsGroupPolicy`
/// are fixed.
pub fn validate_update_csi_driver(old: &CsiDriver, new: &CsiDriver) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_csi_driver(new));
    if old.spec.attach_required != new.spec.attach_required {
        errs.push(FieldError::invalid(
            "spec.attachRequired",
            BadValue::Raw(format!("{}", new.spec.attach_required.unwrap_or_default())),
            "field is immutable",
        ));
    }
    if old.spec.volume_lifecycle_modes != new.spec.volume_lifecycle_modes {
        errs.push(FieldError::invalid(
            "spec.volumeLifecycleModes",
            go_strings(&new.spec.volume_lifecycle_modes),
            "field is immutable",
        ));
    }
    if old.spec.fs_group_policy != new.spec.fs_group_policy {
        errs.push(FieldError::invalid(
            "spec.fsGroupPolicy",
            new.spec.fs_group_policy.clone().unwrap_or_default(),
            "field is immutable",
        ));
    }
    errs
}

/// A CSINode: named after its node, each driver named once with a node ID.
pub fn validate_csi_node(node: &CsiNode) -> ErrorList {
    let mut errs = validate_object_meta(&node.metadata, false, NameRule::Subdomain);
    let mut seen = std::collections::BTreeSet::new();
    for (i, driver) in node.spec.drivers.iter().enumerate() {
        let p = format!("spec.drivers[{i}]");
        csi_driver_name(&driver.name, &format!("{p}.name"), &mut errs);
        if !seen.insert(driver.name.as_str()) {
            errs.push(FieldError::duplicate(format!("{p}.name"), &driver.name));
        }
        if driver.node_id.is_empty() {
            errs.push(FieldError::required(format!("{p}.nodeID")));
        }
        for (j, key) in driver.topology_keys.iter().enumerate() {
            invalid_each(
                &mut errs,
                &format!("{p}.topologyKeys[{j}]"),
                key,
                is_qualified_name(key),
            );
        }
    }
    errs
}

/// A CSIStorageCapacity (`ValidateCSIStorageCapacity`).
pub fn validate_csi_storage_capacity(capacity: &CsiStorageCapacity) -> ErrorList {
    let mut errs = validate_object_meta(&capacity.metadata, true, NameRule::Subdomain);
    if let Some(selector) = &capacity.node_topology {
        errs.extend(validate_label_selector(selector, "nodeTopology"));
    }
    if capacity.storage_class_name.is_empty() {
        errs.push(FieldError::required("storageClassName"));
    } else {
        class_name(&capacity.storage_class_name, "storageClassName", &mut errs);
    }
    for (field, q) in [
        ("capacity", &capacity.capacity),
        ("maximumVolumeSize", &capacity.maximum_volume_size),
    ] {
        if let Some(q) = q
            && storage_bytes(q).is_none_or(|n| n < 0)
        {
            errs.push(FieldError::invalid(
                field,
                q.as_str(),
                "must be greater than or equal to 0",
            ));
        }
    }
    errs
}

/// A VolumeAttachment (`ValidateVolumeAttachment`).
pub fn validate_volume_attachment(va: &VolumeAttachment) -> ErrorList {
    let mut errs = validate_object_meta(&va.metadata, false, NameRule::Subdomain);
    if va.spec.attacher.is_empty() {
        errs.push(FieldError::required("spec.attacher"));
    } else {
        csi_driver_name(&va.spec.attacher, "spec.attacher", &mut errs);
    }
    if va.spec.node_name.is_empty() {
        errs.push(FieldError::required("spec.nodeName"));
    }
    let source = &va.spec.source;
    let sources = usize::from(source.persistent_volume_name.is_some())
        + usize::from(source.inline_volume_spec.is_some());
    if sources != 1 {
        errs.push(FieldError::invalid(
            "spec.source",
            BadValue::Raw("storage.VolumeAttachmentSource{...}".into()),
            "must specify exactly one of inlineVolumeSpec and persistentVolumeName",
        ));
    }
    errs
}

/// An update of a VolumeAttachment: the spec is fixed.
pub fn validate_update_volume_attachment(
    old: &VolumeAttachment,
    new: &VolumeAttachment,
) -> ErrorList {
    let mut errs = validate_object_meta_update(&old.metadata, &new.metadata);
    errs.extend(validate_volume_attachment(new));
    if old.spec != new.spec {
        errs.push(FieldError::invalid(
            "spec",
            BadValue::Raw("storage.VolumeAttachmentSpec{...}".into()),
            "field is immutable",
        ));
    }
    errs
}
