//! Which volume a claim binds to (`pkg/controller/volume/persistentvolume/index.go` and
//! `util.FindMatchingVolume`): pure functions over typed objects, so that the rules are tested
//! without a server.

use std::collections::BTreeMap;

use apiary_api::{
    core_v1::{PersistentVolume, PersistentVolumeClaim},
    validation::storage_bytes,
};

/// A volume's or claim's volume mode, `Filesystem` when unset.
fn volume_mode(mode: Option<&String>) -> &str {
    mode.map_or("Filesystem", String::as_str)
}

/// `CheckVolumeModeMismatches`.
pub fn volume_mode_mismatch(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    volume_mode(claim.spec.volume_mode.as_ref()) != volume_mode(volume.spec.volume_mode.as_ref())
}

/// `CheckAccessModes`: the volume offers every mode the claim asks for.
pub fn access_modes_satisfied(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    claim
        .spec
        .access_modes
        .iter()
        .all(|m| volume.spec.access_modes.contains(m))
}

/// `IsVolumeBoundToClaim`: the volume's `claimRef` names the claim (and its UID, once set).
pub fn is_bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    volume.spec.claim_ref.as_ref().is_some_and(|r| {
        r.name == claim.metadata.name
            && r.namespace == claim.metadata.namespace
            && (r.uid.is_empty() || r.uid == claim.metadata.uid)
    })
}

fn bytes(q: Option<&apiary_api::Quantity>) -> i64 {
    q.and_then(storage_bytes).unwrap_or(0)
}

/// `checkVolumeSatisfyClaim`: why a volume a claim names in `spec.volumeName` does not do.
pub fn volume_satisfies_claim(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Result<(), String> {
    if volume.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "the volume is marked for deletion {:?}",
            volume.metadata.name
        ));
    }
    if bytes(volume.capacity()) < bytes(claim.request()) {
        return Err("requested PV is too small".to_owned());
    }
    if volume.class() != claim.class() {
        return Err("storageClassName does not match".to_owned());
    }
    if volume_mode_mismatch(claim, volume) {
        return Err("incompatible volumeMode".to_owned());
    }
    if !access_modes_satisfied(claim, volume) {
        return Err("incompatible accessMode".to_owned());
    }
    Ok(())
}

/// `FindMatchingVolume` among `volumes` (all offering the claim's access modes): a volume
/// pre-bound to the claim wins outright; otherwise the smallest Available one that is big
/// enough, of the claim's class and mode, matching its selector, and (with `node_labels`, the
/// scheduler's path) reachable from that node. With `delay_binding` and no node (the
/// controller's path for `WaitForFirstConsumer` claims), only pre-bound volumes are taken.
pub fn find_matching_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<(&str, &BTreeMap<String, String>)>,
    delay_binding: bool,
) -> Option<&'a PersistentVolume> {
    let requested = bytes(claim.request());
    let class = claim.class();
    let mut smallest: Option<(&PersistentVolume, i64)> = None;
    for volume in volumes {
        if volume.spec.claim_ref.is_some() && !is_bound_to(volume, claim) {
            continue;
        }
        let size = bytes(volume.capacity());
        if size < requested
            || volume_mode_mismatch(claim, volume)
            || volume.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let reachable =
            node.is_none_or(|(name, labels)| node_affinity_allows(volume, name, labels));
        if is_bound_to(volume, claim) {
            return reachable.then_some(volume);
        }
        if node.is_none() && delay_binding {
            continue;
        }
        if volume.phase() != "Available"
            || claim
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.matches(&volume.metadata.labels))
            || volume.class() != class
            || !reachable
        {
            continue;
        }
        if node.is_some() && !access_modes_satisfied(claim, volume) {
            continue;
        }
        if smallest.is_none_or(|(_, s)| size < s) {
            smallest = Some((volume, size));
        }
    }
    smallest.map(|(v, _)| v)
}

/// `findBestMatchForClaim` (the controller's path): volumes are grouped by their access-mode
/// sets, and the groups offering all the claim's modes are tried from the fewest modes up, so
/// an RWO claim takes an RWO volume before an RWO+RWX one.
pub fn find_best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [PersistentVolume],
    delay_binding: bool,
) -> Option<&'a PersistentVolume> {
    let mut groups: BTreeMap<(usize, Vec<String>), Vec<&PersistentVolume>> = BTreeMap::new();
    for volume in volumes.iter().filter(|v| access_modes_satisfied(claim, v)) {
        let mut modes = volume.spec.access_modes.clone();
        modes.sort();
        modes.dedup();
        groups.entry((modes.len(), modes)).or_default().push(volume);
    }
    groups
        .into_values()
        .find_map(|group| find_matching_volume(claim, group, None, delay_binding))
}

/// `CheckNodeAffinity`: a volume without node affinity is reachable from every node.
pub fn node_affinity_allows(
    volume: &PersistentVolume,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    match volume
        .spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
    {
        Some(required) => required.matches(labels, node_name),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn volume(
        name: &str,
        size: &str,
        modes: &[&str],
        class: &str,
        labels: serde_json::Value,
    ) -> PersistentVolume {
        apiary_api::meta::from_json(json!({
            "metadata": { "name": name, "labels": labels },
            "spec": {
                "capacity": { "storage": size },
                "accessModes": modes,
                "storageClassName": class,
                "hostPath": { "path": "/x" },
            },
            "status": { "phase": "Available" },
        }))
        .unwrap()
    }

    fn claim(size: &str, modes: &[&str], class: &str) -> PersistentVolumeClaim {
        apiary_api::meta::from_json(json!({
            "metadata": { "name": "c", "namespace": "ns", "uid": "u1" },
            "spec": {
                "accessModes": modes,
                "resources": { "requests": { "storage": size } },
                "storageClassName": class,
            },
        }))
        .unwrap()
    }

    fn names(v: Option<&PersistentVolume>) -> Option<&str> {
        v.map(|v| v.metadata.name.as_str())
    }

    #[test]
    fn the_smallest_big_enough_volume_of_the_class_wins() {
        let volumes = [
            volume("big", "10Gi", &["ReadWriteOnce"], "manual", json!({})),
            volume("small", "1Gi", &["ReadWriteOnce"], "manual", json!({})),
            volume("fits", "2Gi", &["ReadWriteOnce"], "manual", json!({})),
            volume("other-class", "2Gi", &["ReadWriteOnce"], "fast", json!({})),
        ];
        let c = claim("1500Mi", &["ReadWriteOnce"], "manual");
        assert_eq!(names(find_best_match(&c, &volumes, false)), Some("fits"));
        let c = claim("20Gi", &["ReadWriteOnce"], "manual");
        assert_eq!(names(find_best_match(&c, &volumes, false)), None);
        let c = claim("1Gi", &["ReadWriteOnce"], "");
        assert_eq!(
            names(find_best_match(&c, &volumes, false)),
            None,
            "no class binds no class"
        );
    }

    #[test]
    fn access_modes_must_be_offered_and_the_fewest_modes_go_first() {
        let volumes = [
            volume(
                "rwx",
                "1Gi",
                &["ReadWriteOnce", "ReadWriteMany"],
                "",
                json!({}),
            ),
            volume("rwo", "5Gi", &["ReadWriteOnce"], "", json!({})),
        ];
        let c = claim("1Gi", &["ReadWriteOnce"], "");
        assert_eq!(names(find_best_match(&c, &volumes, false)), Some("rwo"));
        let c = claim("1Gi", &["ReadWriteMany"], "");
        assert_eq!(names(find_best_match(&c, &volumes, false)), Some("rwx"));
        let c = claim("1Gi", &["ReadOnlyMany"], "");
        assert_eq!(names(find_best_match(&c, &volumes, false)), None);
    }

    #[test]
    fn selectors_pre_binding_and_delayed_binding() {
        let mut volumes = vec![
            volume(
                "slow",
                "1Gi",
                &["ReadWriteOnce"],
                "",
                json!({ "tier": "slow" }),
            ),
            volume(
                "fast",
                "2Gi",
                &["ReadWriteOnce"],
                "",
                json!({ "tier": "fast" }),
            ),
        ];
        let mut c = claim("1Gi", &["ReadWriteOnce"], "");
        c.spec.selector = Some(apiary_api::LabelSelector::from_labels([("tier", "fast")]));
        assert_eq!(names(find_best_match(&c, &volumes, false)), Some("fast"));
        let c = claim("1Gi", &["ReadWriteOnce"], "");
        assert_eq!(
            names(find_best_match(&c, &volumes, true)),
            None,
            "WaitForFirstConsumer"
        );
        // A volume whose claimRef names the claim is taken even when delayed, bigger or not.
        volumes[1].spec.claim_ref = Some(apiary_api::core_v1::ObjectReference {
            name: "c".into(),
            namespace: "ns".into(),
            ..Default::default()
        });
        assert_eq!(names(find_best_match(&c, &volumes, true)), Some("fast"));
        // One pre-bound to another claim is never taken.
        volumes[0].spec.claim_ref = Some(apiary_api::core_v1::ObjectReference {
            name: "other".into(),
            namespace: "ns".into(),
            ..Default::default()
        });
        volumes[1].spec.claim_ref = None;
        volumes[1].status.as_mut().unwrap().phase = "Bound".into();
        assert_eq!(names(find_best_match(&c, &volumes, false)), None);
    }

    #[test]
    fn a_named_volume_must_satisfy_the_claim() {
        let v = volume("v", "1Gi", &["ReadWriteOnce"], "manual", json!({}));
        assert_eq!(
            volume_satisfies_claim(&v, &claim("1Gi", &["ReadWriteOnce"], "manual")),
            Ok(())
        );
        assert_eq!(
            volume_satisfies_claim(&v, &claim("2Gi", &["ReadWriteOnce"], "manual")),
            Err("requested PV is too small".into())
        );
        assert_eq!(
            volume_satisfies_claim(&v, &claim("1Gi", &["ReadWriteOnce"], "")),
            Err("storageClassName does not match".into())
        );
        assert_eq!(
            volume_satisfies_claim(&v, &claim("1Gi", &["ReadWriteMany"], "manual")),
            Err("incompatible accessMode".into())
        );
    }

    #[test]
    fn node_affinity_restricts_the_schedulers_matches() {
        let mut v = volume("local", "1Gi", &["ReadWriteOnce"], "", json!({}));
        v.spec.node_affinity = Some(
            apiary_api::meta::from_json(json!({ "required": { "nodeSelectorTerms": [{
                "matchExpressions": [{ "key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"] }],
            }] } }))
            .unwrap(),
        );
        let n1 = BTreeMap::from([("kubernetes.io/hostname".to_owned(), "n1".to_owned())]);
        let n2 = BTreeMap::from([("kubernetes.io/hostname".to_owned(), "n2".to_owned())]);
        let c = claim("1Gi", &["ReadWriteOnce"], "");
        assert!(find_matching_volume(&c, [&v], Some(("n1", &n1)), true).is_some());
        assert!(find_matching_volume(&c, [&v], Some(("n2", &n2)), true).is_none());
    }
}
