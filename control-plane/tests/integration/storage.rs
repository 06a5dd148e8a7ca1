//! Storage through the real kubectl: PersistentVolumes, claims and StorageClasses as Kubernetes
//! serves them (validation, defaults, tables), the storage admission plugins, the built-in
//! `local-path` class, and the PV controller binding static volumes.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::{ControlPlane, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn apply(cp: &ControlPlane, yaml: &str) -> String {
    cp.kubectl_stdin(&["apply", "-f", "-"], yaml).success()
}

fn get(cp: &ControlPlane, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    cp.kubectl_json(&args)
}

fn phase(cp: &ControlPlane, what: &[&str]) -> String {
    get(cp, what)["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn wait_phase(cp: &ControlPlane, what: &[&str], wanted: &str) -> Value {
    wait_for(&format!("{what:?} {wanted}"), WAIT, || {
        let object = get(cp, what);
        (object["status"]["phase"] == wanted).then_some(object)
    })
}

#[test]
fn storage_resources_are_discovered_and_explained() {
    let cp = ControlPlane::start();
    let out = cp.kubectl(&["api-resources"]).success();
    for line in [
        r"persistentvolumeclaims\s+pvc\s+v1\s+true\s+PersistentVolumeClaim",
        r"persistentvolumes\s+pv\s+v1\s+false\s+PersistentVolume",
        r"storageclasses\s+sc\s+storage.k8s.io/v1\s+false\s+StorageClass",
        r"csidrivers\s+storage.k8s.io/v1\s+false\s+CSIDriver",
        r"csinodes\s+storage.k8s.io/v1\s+false\s+CSINode",
        r"csistoragecapacities\s+storage.k8s.io/v1\s+true\s+CSIStorageCapacity",
        r"volumeattachments\s+storage.k8s.io/v1\s+false\s+VolumeAttachment",
    ] {
        let re = regex::Regex::new(line).unwrap();
        assert!(re.is_match(&out), "{line} in {out}");
    }
    let explain = cp.kubectl(&["explain", "pvc.spec"]).success();
    assert!(explain.contains("storageClassName"), "{explain}");
    assert!(explain.contains("accessModes"), "{explain}");
    let explain = cp.kubectl(&["explain", "sc.volumeBindingMode"]).success();
    assert!(explain.contains("VolumeBindingImmediate"), "{explain}");
}

#[test]
fn the_local_path_class_is_the_default_and_kept_across_restarts() {
    let mut cp = ControlPlane::start();
    let out = cp.kubectl(&["get", "sc"]).success();
    let re = regex::Regex::new(concat!(
        r"(?m)^NAME\s+PROVISIONER\s+RECLAIMPOLICY\s+VOLUMEBINDINGMODE\s+ALLOWVOLUMEEXPANSION\s+AGE\n",
        r"local-path \(default\)\s+local.csi.apiary.dev\s+Delete\s+WaitForFirstConsumer\s+true\s+\S+$",
    ))
    .unwrap();
    assert!(re.is_match(&out), "{out}");
    let driver = get(&cp, &["csidriver", "local.csi.apiary.dev"]);
    assert_eq!(driver["spec"]["storageCapacity"], true);
    assert_eq!(driver["spec"]["attachRequired"], false);

    // A user's edit survives a restart (created only when missing, never overwritten)...
    cp.kubectl(&["label", "sc", "local-path", "edited=yes"])
        .success();
    // ...and a class of their own made default keeps the default after local-path is
    // deleted and comes back.
    apply(
        &cp,
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: mine
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: example.com/mine
"#,
    );
    cp.restart_with(&[]);
    assert_eq!(
        get(&cp, &["sc", "local-path"])["metadata"]["labels"]["edited"],
        "yes"
    );
    cp.kubectl(&["delete", "sc", "local-path"]).success();
    cp.restart_with(&[]);
    let back = get(&cp, &["sc", "local-path"]);
    assert!(
        back["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].is_null(),
        "{back}"
    );
    let out = cp.kubectl(&["get", "sc"]).success();
    assert!(out.contains("mine (default)"), "{out}");
}

#[test]
fn storage_class_defaults_and_immutable_fields() {
    let cp = ControlPlane::start();
    apply(
        &cp,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast}\nprovisioner: example.com/fast\nparameters: {tier: gold}\n",
    );
    let sc = get(&cp, &["sc", "fast"]);
    assert_eq!(sc["reclaimPolicy"], "Delete");
    assert_eq!(sc["volumeBindingMode"], "Immediate");
    let out = cp
        .kubectl(&[
            "patch", "sc", "fast", "--type=merge", "-p",
            r#"{"provisioner":"example.com/other","parameters":{"tier":"silver"},"volumeBindingMode":"WaitForFirstConsumer"}"#,
        ])
        .failure();
    for message in [
        "provisioner: Forbidden: updates to provisioner are forbidden.",
        "parameters: Forbidden: updates to parameters are forbidden.",
        "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable",
    ] {
        assert!(out.contains(message), "{message} in {out}");
    }
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: bad}\nprovisioner: \"\"\nreclaimPolicy: Recycle\nvolumeBindingMode: Later\n",
        )
        .failure();
    for message in [
        "provisioner: Required value",
        "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\"",
        "volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"",
    ] {
        assert!(out.contains(message), "{message} in {out}");
    }
}

#[test]
fn claims_and_volumes_are_validated_as_kubernetes_validates_them() {
    let cp = ControlPlane::start();
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {volumeMode: Disk}\n",
        )
        .failure();
    for message in [
        "PersistentVolumeClaim \"c\" is invalid",
        "spec.accessModes: Required value: at least 1 access mode is required",
        "spec.resources[storage]: Required value",
        "spec.volumeMode: Unsupported value: \"Disk\": supported values: \"Block\", \"Filesystem\"",
    ] {
        assert!(out.contains(message), "{message} in {out}");
    }
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c}\nspec:\n  accessModes: [ReadWriteSometimes]\n  resources: {requests: {storage: \"0\"}}\n",
        )
        .failure();
    for message in [
        "spec.accessModes: Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
        "spec.resources[storage]: Invalid value: \"0\": must be greater than zero",
    ] {
        assert!(out.contains(message), "{message} in {out}");
    }
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: v}\nspec:\n  capacity: {storage: 1Gi}\n  persistentVolumeReclaimPolicy: Keep\n",
        )
        .failure();
    for message in [
        "spec.accessModes: Required value",
        "spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\": supported values: \"Delete\", \"Recycle\", \"Retain\"",
        "spec: Required value: must specify a volume type",
    ] {
        assert!(out.contains(message), "{message} in {out}");
    }
    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: v}\nspec:\n  accessModes: [ReadWriteOnce]\n  capacity: {storage: 1Gi}\n  hostPath: {path: /a}\n  local: {path: /b}\n",
        )
        .failure();
    for message in [
        "spec.local: Forbidden: may not specify more than 1 volume type",
        "spec.nodeAffinity: Required value: Local volume requires node affinity",
    ] {
        assert!(out.contains(message), "{message} in {out}");
    }
}

#[test]
fn volumes_and_claims_are_defaulted_protected_and_shown_as_kubectl_shows_them() {
    let cp = ControlPlane::start();
    apply(
        &cp,
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: vol}
spec:
  accessModes: [ReadWriteOnce, ReadOnlyMany]
  capacity: {storage: 2Gi}
  hostPath: {path: /tmp/vol}
  storageClassName: manual
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    let pv = get(&cp, &["pv", "vol"]);
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
    assert_eq!(
        pv["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pv-protection"])
    );
    assert!(pv["status"]["lastPhaseTransitionTime"].is_string(), "{pv}");
    let pvc = get(&cp, &["pvc", "data"]);
    assert_eq!(
        pvc["spec"]["storageClassName"], "local-path",
        "DefaultStorageClass"
    );
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pvc["status"]["phase"], "Pending");
    assert_eq!(
        pvc["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pvc-protection"])
    );

    // An explicit "" is a choice of no class: left alone.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: none}\nspec:\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    assert_eq!(get(&cp, &["pvc", "none"])["spec"]["storageClassName"], "");

    let out = cp.kubectl(&["get", "pv"]).success();
    let re = regex::Regex::new(
        r"(?m)^NAME\s+CAPACITY\s+ACCESS MODES\s+RECLAIM POLICY\s+STATUS\s+CLAIM\s+STORAGECLASS\s+VOLUMEATTRIBUTESCLASS\s+REASON\s+AGE\nvol\s+2Gi\s+RWO,ROX\s+Retain\s+Available\s+manual\s+<unset>\s+\S+$",
    )
    .unwrap();
    wait_for("the volume Available in the table", WAIT, || {
        re.is_match(&cp.kubectl(&["get", "pv"]).success())
            .then_some(())
    });
    let _ = out;
    let out = cp.kubectl(&["get", "pvc", "data"]).success();
    let re = regex::Regex::new(
        r"(?m)^NAME\s+STATUS\s+VOLUME\s+CAPACITY\s+ACCESS MODES\s+STORAGECLASS\s+VOLUMEATTRIBUTESCLASS\s+AGE\ndata\s+Pending\s+local-path\s+<unset>\s+\S+$",
    )
    .unwrap();
    assert!(re.is_match(&out), "{out}");
    let out = cp.kubectl(&["get", "pv,pvc,sc"]).success();
    for kind in [
        "persistentvolume/vol",
        "persistentvolumeclaim/data",
        "storageclass.storage.k8s.io/local-path",
    ] {
        assert!(out.contains(kind), "{kind} in {out}");
    }
    let out = cp
        .kubectl(&["get", "pvc", "--field-selector", "name=data", "-o", "name"])
        .success();
    assert_eq!(out.trim(), "persistentvolumeclaim/data");
}

#[test]
fn the_newest_default_class_wins() {
    let cp = ControlPlane::start();
    std::thread::sleep(Duration::from_millis(1100)); // a later creationTimestamp than local-path's
    apply(
        &cp,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: newer\n  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}\nprovisioner: example.com/newer\n",
    );
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    assert_eq!(get(&cp, &["pvc", "c"])["spec"]["storageClassName"], "newer");
}

fn events_of(cp: &ControlPlane, kind: &str, name: &str) -> String {
    cp.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind={kind},involvedObject.name={name}"),
        "-o",
        "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
    ])
    .success()
}

/// Waits for an event whose `TYPE REASON MESSAGE` row contains `wanted`, spaces aside (the
/// columns are as wide as the object's longest reason).
fn wait_event(cp: &ControlPlane, kind: &str, name: &str, wanted: &str) -> String {
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let wanted = words(wanted);
    wait_for(&format!("event {wanted:?} on {kind} {name}"), WAIT, || {
        let events = events_of(cp, kind, name);
        events
            .lines()
            .any(|row| words(row).contains(&wanted))
            .then_some(events)
    })
}

const STATIC_VOLUMES: &str = r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-small, labels: {tier: slow}}
spec:
  accessModes: [ReadWriteOnce]
  capacity: {storage: 1Gi}
  hostPath: {path: /tmp/pv-small}
  storageClassName: manual
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-big, labels: {tier: fast}}
spec:
  accessModes: [ReadWriteOnce, ReadWriteMany]
  capacity: {storage: 5Gi}
  hostPath: {path: /tmp/pv-big}
  storageClassName: manual
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-named}
spec:
  accessModes: [ReadWriteOnce]
  capacity: {storage: 3Gi}
  hostPath: {path: /tmp/pv-named}
  storageClassName: manual
"#;

fn claim(name: &str, size: &str, modes: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  storageClassName: manual\n  accessModes: [{modes}]\n  resources: {{requests: {{storage: {size}}}}}\n{extra}"
    )
}

#[test]
fn static_volumes_bind_by_size_modes_selector_and_name() {
    let cp = ControlPlane::start();
    apply(&cp, STATIC_VOLUMES);
    for pv in ["pv-small", "pv-big", "pv-named"] {
        wait_phase(&cp, &["pv", pv], "Available");
    }
    // A named volume that does not satisfy the claim is refused with why.
    apply(
        &cp,
        &claim(
            "too-big",
            "10Gi",
            "ReadWriteOnce",
            "  volumeName: pv-named\n",
        ),
    );
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "too-big",
        "Cannot bind to requested volume \"pv-named\": requested PV is too small",
    );
    // volumeName first, so the size rule cannot take pv-named.
    apply(
        &cp,
        &claim(
            "by-name",
            "2Gi",
            "ReadWriteOnce",
            "  volumeName: pv-named\n",
        ),
    );
    let bound = wait_phase(&cp, &["pvc", "by-name"], "Bound");
    assert_eq!(bound["spec"]["volumeName"], "pv-named");
    assert_eq!(
        bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    assert!(
        bound["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"].is_null(),
        "the user named the volume: {bound}"
    );
    assert_eq!(bound["status"]["capacity"]["storage"], "3Gi");

    // The smallest that fits and offers the modes.
    apply(&cp, &claim("small", "500Mi", "ReadWriteOnce", ""));
    let bound = wait_phase(&cp, &["pvc", "small"], "Bound");
    assert_eq!(bound["spec"]["volumeName"], "pv-small");
    assert_eq!(
        bound["status"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    assert_eq!(bound["status"]["capacity"]["storage"], "1Gi");
    assert_eq!(
        bound["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    let pv = wait_phase(&cp, &["pv", "pv-small"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "small");
    assert_eq!(pv["spec"]["claimRef"]["namespace"], "default");
    assert_eq!(pv["spec"]["claimRef"]["uid"], bound["metadata"]["uid"]);
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    let out = cp.kubectl(&["get", "pvc", "small"]).success();
    let re =
        regex::Regex::new(r"(?m)^small\s+Bound\s+pv-small\s+1Gi\s+RWO\s+manual\s+<unset>\s+\S+$")
            .unwrap();
    assert!(re.is_match(&out), "{out}");
    let out = cp.kubectl(&["get", "pv", "pv-small"]).success();
    let re = regex::Regex::new(
        r"(?m)^pv-small\s+1Gi\s+RWO\s+Retain\s+Bound\s+default/small\s+manual\s+<unset>\s+\S+$",
    )
    .unwrap();
    assert!(re.is_match(&out), "{out}");

    // Modes nothing small offers, and a selector.
    apply(
        &cp,
        &claim(
            "shared",
            "1Gi",
            "ReadWriteMany",
            "  selector: {matchLabels: {tier: fast}}\n",
        ),
    );
    assert_eq!(
        wait_phase(&cp, &["pvc", "shared"], "Bound")["spec"]["volumeName"],
        "pv-big"
    );

    // Nothing left that fits: Pending, and told so when there is no class to provision from.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: none}\nspec:\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "none",
        "FailedBinding   no persistent volumes available for this claim and no storage class is set",
    );
    assert_eq!(get(&cp, &["pvc", "none"])["status"]["phase"], "Pending");

    assert_eq!(phase(&cp, &["pvc", "too-big"]), "Pending");
}

#[test]
fn a_deleted_claim_releases_a_retained_volume_and_recycle_fails() {
    let cp = ControlPlane::start();
    apply(&cp, STATIC_VOLUMES);
    apply(&cp, &claim("data", "1Gi", "ReadWriteOnce", ""));
    wait_phase(&cp, &["pvc", "data"], "Bound");
    cp.kubectl(&["delete", "pvc", "data", "--wait=true", "--timeout=30s"])
        .success();
    let pv = wait_phase(&cp, &["pv", "pv-small"], "Released");
    assert_eq!(
        pv["spec"]["claimRef"]["name"], "data",
        "a released volume keeps its claimRef"
    );
    // A new claim does not take a Released volume.
    apply(
        &cp,
        &claim(
            "again",
            "1Gi",
            "ReadWriteOnce",
            "  selector: {matchLabels: {tier: slow}}\n",
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&cp, &["pvc", "again"]), "Pending");
    // A bound volume is kept by its finalizer; a released one goes.
    cp.kubectl(&["delete", "pv", "pv-small", "--wait=true", "--timeout=30s"])
        .success();

    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: recycled}\nspec:\n  accessModes: [ReadWriteOnce]\n  capacity: {storage: 1Gi}\n  hostPath: {path: /tmp/r}\n  storageClassName: recycle\n  persistentVolumeReclaimPolicy: Recycle\n",
    );
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: r}\nspec:\n  storageClassName: recycle\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait_phase(&cp, &["pvc", "r"], "Bound");
    cp.kubectl(&["delete", "pvc", "r"]).success();
    let pv = wait_phase(&cp, &["pv", "recycled"], "Failed");
    assert_eq!(
        pv["status"]["message"],
        "No recycler plugin found for the volume!"
    );
    wait_event(
        &cp,
        "PersistentVolume",
        "recycled",
        "VolumeFailedRecycle   No recycler plugin found for the volume!",
    );
}

#[test]
fn a_bound_volume_is_kept_until_its_claim_goes() {
    let cp = ControlPlane::start();
    apply(&cp, STATIC_VOLUMES);
    apply(&cp, &claim("data", "1Gi", "ReadWriteOnce", ""));
    wait_phase(&cp, &["pvc", "data"], "Bound");
    cp.kubectl(&["delete", "pv", "pv-small", "--wait=false"])
        .success();
    std::thread::sleep(Duration::from_secs(2));
    let pv = get(&cp, &["pv", "pv-small"]);
    assert!(pv["metadata"]["deletionTimestamp"].is_string(), "{pv}");
    let out = cp.kubectl(&["get", "pv", "pv-small"]).success();
    assert!(out.contains("Terminating"), "{out}");
    cp.kubectl(&["delete", "pvc", "data", "--wait=true", "--timeout=30s"])
        .success();
    wait_for("the volume gone", WAIT, || {
        (!cp.kubectl(&["get", "pv", "pv-small"]).ok()).then_some(())
    });
}

#[test]
fn a_claim_in_use_by_a_pod_stays_terminating_until_the_pod_is_gone() {
    let cp = ControlPlane::start();
    apply(&cp, STATIC_VOLUMES);
    apply(&cp, &claim("data", "1Gi", "ReadWriteOnce", ""));
    wait_phase(&cp, &["pvc", "data"], "Bound");
    // A pod bound to a node by hand (no scheduler needed) that uses the claim.
    apply(
        &cp,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: user}
spec:
  nodeName: somewhere
  containers: [{name: c, image: busybox}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
"#,
    );
    let out = cp.kubectl(&["describe", "pvc", "data"]).success();
    for line in [
        r"(?m)^Status:\s+Bound$",
        r"(?m)^Volume:\s+pv-small$",
        r"(?m)^Finalizers:\s+\[kubernetes.io/pvc-protection\]$",
        r"(?m)^Used By:\s+user$",
    ] {
        assert!(
            regex::Regex::new(line).unwrap().is_match(&out),
            "{line} in {out}"
        );
    }
    cp.kubectl(&["delete", "pvc", "data", "--wait=false"])
        .success();
    std::thread::sleep(Duration::from_secs(2));
    let out = cp.kubectl(&["get", "pvc", "data"]).success();
    assert!(out.contains("Terminating"), "{out}");
    let pvc = get(&cp, &["pvc", "data"]);
    assert_eq!(
        pvc["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pvc-protection"])
    );
    // The pod finishing lets it go (here: deleted outright, no agent to wait for).
    cp.kubectl(&["delete", "pod", "user", "--grace-period=0", "--force"])
        .success();
    wait_for("the claim gone", WAIT, || {
        (!cp.kubectl(&["get", "pvc", "data"]).ok()).then_some(())
    });
    wait_phase(&cp, &["pv", "pv-small"], "Released");
}

#[test]
fn claims_of_a_provisioner_class_are_handed_to_it() {
    let cp = ControlPlane::start();
    apply(
        &cp,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: now}\nprovisioner: example.com/now\nreclaimPolicy: Delete\n",
    );
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: now}\nspec:\n  storageClassName: now\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    let claim = wait_for("the provisioner annotation", WAIT, || {
        let c = get(&cp, &["pvc", "now"]);
        c["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"]
            .is_string()
            .then_some(c)
    });
    let annotations = &claim["metadata"]["annotations"];
    assert_eq!(
        annotations["volume.kubernetes.io/storage-provisioner"],
        "example.com/now"
    );
    assert_eq!(
        annotations["volume.beta.kubernetes.io/storage-provisioner"],
        "example.com/now"
    );
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "now",
        "ExternalProvisioning   Waiting for a volume to be created either by the external provisioner 'example.com/now' or manually by the system administrator.",
    );

    // The provisioner's part, as the node agent will play it: a volume naming the claim.
    let uid = claim["metadata"]["uid"].as_str().unwrap();
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pvc-{uid}
  annotations: {{pv.kubernetes.io/provisioned-by: example.com/now}}
spec:
  accessModes: [ReadWriteOnce]
  capacity: {{storage: 1Gi}}
  persistentVolumeReclaimPolicy: Delete
  storageClassName: now
  claimRef: {{namespace: default, name: now, uid: {uid}}}
  csi: {{driver: example.com, volumeHandle: "{uid}"}}
"#
        ),
    );
    let bound = wait_phase(&cp, &["pvc", "now"], "Bound");
    assert_eq!(bound["spec"]["volumeName"], format!("pvc-{uid}"));
    // Delete reclaim of a provisioned volume is the provisioner's: Released, not Failed.
    cp.kubectl(&["delete", "pvc", "now"]).success();
    let pv = wait_phase(&cp, &["pv", &format!("pvc-{uid}")], "Released");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        phase(&cp, &["pv", &format!("pvc-{uid}")]),
        "Released",
        "{pv}"
    );

    // WaitForFirstConsumer: nothing until a node is selected; a missing class is reported.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: later}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "later",
        "WaitForFirstConsumer   waiting for first consumer to be created before binding",
    );
    assert!(get(&cp, &["pvc", "later"])["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"].is_null());
    cp.kubectl(&[
        "annotate",
        "pvc",
        "later",
        "volume.kubernetes.io/selected-node=n1",
    ])
    .success();
    wait_for("local-path asked to provision", WAIT, || {
        (get(&cp, &["pvc", "later"])["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"]
            == "local.csi.apiary.dev")
            .then_some(())
    });
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ghost}\nspec:\n  storageClassName: ghost\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "ghost",
        "ProvisioningFailed   storageclass.storage.k8s.io \"ghost\" not found",
    );
}

#[test]
fn a_bound_claim_grows_only_when_its_class_allows_it() {
    let cp = ControlPlane::start();
    apply(
        &cp,
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: grows}
provisioner: example.com/grows
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: grows}
spec:
  accessModes: [ReadWriteOnce]
  capacity: {storage: 1Gi}
  csi: {driver: example.com, volumeHandle: grows}
  storageClassName: grows
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: grows}
spec:
  storageClassName: grows
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    apply(&cp, STATIC_VOLUMES);
    apply(&cp, &claim("fixed", "1Gi", "ReadWriteOnce", ""));
    apply(&cp, &claim("pending", "100Gi", "ReadWriteOnce", ""));
    wait_phase(&cp, &["pvc", "grows"], "Bound");
    wait_phase(&cp, &["pvc", "fixed"], "Bound");
    let grow = |name: &str, size: &str| {
        cp.kubectl(&[
            "patch",
            "pvc",
            name,
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#),
        ])
    };
    grow("grows", "2Gi").success();
    assert_eq!(
        get(&cp, &["pvc", "grows"])["spec"]["resources"]["requests"]["storage"],
        "2Gi"
    );
    // Handed to the volume's CSI driver, which grows it.
    wait_for("the resizer named", WAIT, || {
        (get(&cp, &["pvc", "grows"])["metadata"]["annotations"]["volume.kubernetes.io/storage-resizer"]
            == "example.com")
            .then_some(())
    });
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "grows",
        "ExternalExpanding   waiting for an external controller to expand this PVC",
    );
    let out = grow("fixed", "2Gi").failure();
    assert!(
        out.contains(
            "persistentvolumeclaims \"fixed\" is forbidden: only dynamically provisioned pvc can be \
             resized and the storageclass that provisions the pvc must support resize"
        ),
        "{out}"
    );
    let out = grow("grows", "500Mi").failure();
    assert!(
        out.contains(
            "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
        ),
        "{out}"
    );
    let out = grow("pending", "200Gi").failure();
    assert!(
        out.contains("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"),
        "{out}"
    );
    let out = cp
        .kubectl(&[
            "patch",
            "pvc",
            "grows",
            "--type=merge",
            "-p",
            r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
        ])
        .failure();
    assert!(
        out.contains("spec: Forbidden: spec is immutable after creation"),
        "{out}"
    );
}

const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  replicas: 2
  podManagementPolicy: Parallel
  serviceName: web
  selector: {matchLabels: {app: web}}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: WHEN_DELETED, whenScaled: WHEN_SCALED}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: c
        image: busybox
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data, labels: {kind: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

fn stateful_set(when_deleted: &str, when_scaled: &str) -> String {
    STATEFUL_SET
        .replace("WHEN_DELETED", when_deleted)
        .replace("WHEN_SCALED", when_scaled)
}

fn exists(cp: &ControlPlane, what: &[&str]) -> bool {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    cp.kubectl(&args).ok()
}

#[test]
fn a_stateful_set_keeps_one_claim_per_ordinal_across_pod_deletion() {
    let cp = ControlPlane::start();
    apply(&cp, &stateful_set("Retain", "Retain"));
    let sts = get(&cp, &["sts", "web"]);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
        "Filesystem"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["status"]["phase"],
        "Pending"
    );
    for ordinal in [0, 1] {
        let pod = wait_for(&format!("pod web-{ordinal}"), WAIT, || {
            let out = cp
                .kubectl(&["get", "pod", &format!("web-{ordinal}"), "-o", "json"])
                .output()?;
            serde_json::from_str::<Value>(&out).ok()
        });
        let volumes = &pod["spec"]["volumes"];
        assert_eq!(volumes[0]["name"], "data", "{volumes}");
        assert_eq!(
            volumes[0]["persistentVolumeClaim"]["claimName"],
            format!("data-web-{ordinal}")
        );
        let claim = get(&cp, &["pvc", &format!("data-web-{ordinal}")]);
        assert_eq!(
            claim["metadata"]["labels"]["app"], "web",
            "the set's selector"
        );
        assert_eq!(
            claim["metadata"]["labels"]["kind"], "data",
            "the template's"
        );
        assert_eq!(claim["spec"]["storageClassName"], "local-path");
        assert!(
            claim["metadata"]["ownerReferences"].is_null(),
            "Retain: {claim}"
        );
    }
    wait_event(
        &cp,
        "StatefulSet",
        "web",
        "create Claim data-web-0 Pod web-0 in StatefulSet web success",
    );
    let uid = get(&cp, &["pvc", "data-web-0"])["metadata"]["uid"].clone();
    let pod_uid = get(&cp, &["pod", "web-0"])["metadata"]["uid"].clone();
    cp.kubectl(&["delete", "pod", "web-0", "--wait=true", "--timeout=30s"])
        .success();
    wait_for("web-0 recreated", WAIT, || {
        let out = cp
            .kubectl(&["get", "pod", "web-0", "-o", "json"])
            .output()?;
        let pod: Value = serde_json::from_str(&out).ok()?;
        (pod["metadata"]["uid"] != pod_uid).then_some(())
    });
    assert_eq!(
        get(&cp, &["pvc", "data-web-0"])["metadata"]["uid"],
        uid,
        "the same claim"
    );

    // Scaling down and deleting the set keep the claims under Retain.
    cp.kubectl(&["scale", "sts", "web", "--replicas=1"])
        .success();
    wait_for("web-1 gone", WAIT, || {
        (!exists(&cp, &["pod", "web-1"])).then_some(())
    });
    cp.kubectl(&["delete", "sts", "web", "--wait=true", "--timeout=30s"])
        .success();
    std::thread::sleep(Duration::from_secs(2));
    assert!(exists(&cp, &["pvc", "data-web-0"]));
    assert!(exists(&cp, &["pvc", "data-web-1"]));
}

#[test]
fn the_retention_policy_deletes_claims_with_the_set_or_when_scaled_down() {
    let cp = ControlPlane::start();
    apply(&cp, &stateful_set("Delete", "Delete"));
    let set_uid = get(&cp, &["sts", "web"])["metadata"]["uid"].clone();
    for ordinal in [0, 1] {
        let claim = wait_for(
            &format!("data-web-{ordinal} owned by the set"),
            WAIT,
            || {
                let out = cp
                    .kubectl(&["get", "pvc", &format!("data-web-{ordinal}"), "-o", "json"])
                    .output()?;
                let claim: Value = serde_json::from_str(&out).ok()?;
                (claim["metadata"]["ownerReferences"][0]["uid"] == set_uid).then_some(claim)
            },
        );
        assert_eq!(
            claim["metadata"]["ownerReferences"][0]["kind"],
            "StatefulSet"
        );
    }
    // whenScaled: the condemned pod owns its claim, which goes with it.
    cp.kubectl(&["scale", "sts", "web", "--replicas=1"])
        .success();
    wait_for("data-web-1 gone with web-1", WAIT, || {
        (!exists(&cp, &["pvc", "data-web-1"]) && !exists(&cp, &["pod", "web-1"])).then_some(())
    });
    assert!(exists(&cp, &["pvc", "data-web-0"]));
    // whenDeleted: the set's claims go with it.
    cp.kubectl(&["delete", "sts", "web"]).success();
    wait_for("data-web-0 gone with the set", WAIT, || {
        (!exists(&cp, &["pvc", "data-web-0"])).then_some(())
    });

    let out = cp
        .kubectl_stdin(&["create", "-f", "-"], &stateful_set("Keep", "Retain"))
        .failure();
    assert!(
        out.contains("spec.persistentVolumeClaimRetentionPolicy.whenDeleted: Unsupported value: \"Keep\": supported values: \"Delete\", \"Retain\""),
        "{out}"
    );
}

#[test]
fn an_ephemeral_volume_gets_a_claim_owned_by_its_pod() {
    let cp = ControlPlane::start();
    let pod = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers: [{{name: c, image: busybox, volumeMounts: [{{name: scratch, mountPath: /scratch}}]}}]
  volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        metadata: {{labels: {{type: scratch}}}}
        spec:
          accessModes: [ReadWriteOnce]
          resources: {{requests: {{storage: 1Gi}}}}
"#
        )
    };
    apply(&cp, &pod("job"));
    let pod_uid = get(&cp, &["pod", "job"])["metadata"]["uid"].clone();
    let claim = wait_for("the ephemeral claim", WAIT, || {
        let out = cp
            .kubectl(&["get", "pvc", "job-scratch", "-o", "json"])
            .output()?;
        serde_json::from_str::<Value>(&out).ok()
    });
    let owner = &claim["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Pod");
    assert_eq!(owner["uid"], pod_uid);
    assert_eq!(owner["controller"], true);
    assert_eq!(claim["metadata"]["labels"]["type"], "scratch");
    assert_eq!(claim["spec"]["storageClassName"], "local-path");
    cp.kubectl(&["delete", "pod", "job", "--wait=true", "--timeout=30s"])
        .success();
    wait_for("the claim gone with its pod", WAIT, || {
        (!exists(&cp, &["pvc", "job-scratch"])).then_some(())
    });

    // A claim of that name the pod does not own is not its.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: other-scratch}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    apply(&cp, &pod("other"));
    wait_event(
        &cp,
        "Pod",
        "other",
        "PVC default/other-scratch was not created for pod default/other (pod is not owner)",
    );

    let out = cp
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: s, ephemeral: {volumeClaimTemplate: {spec: {resources: {requests: {storage: 1Gi}}}}}}]\n",
        )
        .failure();
    assert!(
        out.contains("spec.volumes[0].ephemeral.volumeClaimTemplate.spec.accessModes: Required value: at least 1 access mode is required"),
        "{out}"
    );
}

/// A Ready node (no agent behind it: bound pods stay Pending) in the local-path topology.
fn register_node(cp: &ControlPlane, name: &str) {
    let now = chrono_now();
    cp.register_node(
        &serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.local.csi.apiary.dev/node": name,
            } },
            "status": {
                "capacity": { "cpu": "4", "memory": "8Gi", "pods": "110" },
                "allocatable": { "cpu": "4", "memory": "8Gi", "pods": "110" },
                "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now }],
            },
        })
        .to_string(),
    );
}

fn chrono_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn pod_using(name: &str, claim: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n  volumes: [{{name: d, persistentVolumeClaim: {{claimName: {claim}}}}}]\n{extra_spec}"
    )
}

fn wait_unschedulable(cp: &ControlPlane, pod: &str, wanted: &str) {
    wait_for(&format!("pod {pod} unschedulable: {wanted}"), WAIT, || {
        let pod = get(cp, &["pod", pod]);
        assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "PodScheduled"
                    && c["reason"] == "Unschedulable"
                    && c["message"].as_str().is_some_and(|m| m.contains(wanted))
            })
            .then_some(())
    });
}

fn wait_scheduled(cp: &ControlPlane, pod: &str) -> String {
    wait_for(&format!("pod {pod} bound"), WAIT, || {
        get(cp, &["pod", pod])["spec"]["nodeName"]
            .as_str()
            .map(str::to_owned)
    })
}

#[test]
fn the_scheduler_refuses_pods_whose_claims_cannot_be_used() {
    let cp = ControlPlane::start();
    register_node(&cp, "n1");
    register_node(&cp, "n2");
    apply(&cp, &pod_using("missing", "nothing", ""));
    wait_unschedulable(
        &cp,
        "missing",
        "0/2 nodes are available: persistentvolumeclaim \"nothing\" not found. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.",
    );
    wait_event(
        &cp,
        "Pod",
        "missing",
        "persistentvolumeclaim \"nothing\" not found",
    );
    // The claim appearing lets the pod go (no class: bound by the PV controller first).
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: nothing}\nspec:\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait_unschedulable(
        &cp,
        "missing",
        "pod has unbound immediate PersistentVolumeClaims",
    );

    // A bound local volume pins its users to its node.
    apply(
        &cp,
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: on-n1}
spec:
  accessModes: [ReadWriteOnce]
  capacity: {storage: 1Gi}
  storageClassName: ""
  local: {path: /data}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [n1]}]
"#,
    );
    wait_phase(&cp, &["pvc", "nothing"], "Bound");
    assert_eq!(
        wait_scheduled(&cp, "missing"),
        "n1",
        "the claim's volume is on n1"
    );
    apply(
        &cp,
        &pod_using(
            "elsewhere",
            "nothing",
            "  nodeSelector: {kubernetes.io/hostname: n2}\n",
        ),
    );
    wait_unschedulable(
        &cp,
        "elsewhere",
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume node affinity conflict.",
    );
}

#[test]
fn wait_for_first_consumer_claims_follow_capacity_to_the_selected_node() {
    let cp = ControlPlane::start();
    register_node(&cp, "n1");
    register_node(&cp, "n2");
    // What the node agents publish: n1 has room for 10Gi, n2 for 1Gi.
    for (node, capacity) in [("n1", "10Gi"), ("n2", "1Gi")] {
        apply(
            &cp,
            &format!(
                "apiVersion: storage.k8s.io/v1\nkind: CSIStorageCapacity\nmetadata: {{name: local-path-{node}, namespace: kube-system}}\nstorageClassName: local-path\ncapacity: {capacity}\nnodeTopology: {{matchLabels: {{topology.local.csi.apiary.dev/node: {node}}}}}\n"
            ),
        );
    }
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 5Gi}}\n",
    );
    apply(&cp, &pod_using("db", "data", ""));
    let claim = wait_for("the selected node", WAIT, || {
        let c = get(&cp, &["pvc", "data"]);
        c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
            .is_string()
            .then_some(c)
    });
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        "n1"
    );
    // The PV controller hands it to local-path; the pod waits for the claim to be bound.
    wait_for("local-path asked to provision", WAIT, || {
        (get(&cp, &["pvc", "data"])["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"]
            == "local.csi.apiary.dev")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        get(&cp, &["pod", "db"])["spec"]["nodeName"].is_null(),
        "bound only after its claim"
    );
    // The node agent's part: the volume, on n1, for the claim.
    let uid = claim["metadata"]["uid"].as_str().unwrap();
    apply(
        &cp,
        &format!(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pvc-{uid}
  annotations: {{pv.kubernetes.io/provisioned-by: local.csi.apiary.dev}}
spec:
  accessModes: [ReadWriteOnce]
  capacity: {{storage: 5Gi}}
  persistentVolumeReclaimPolicy: Delete
  storageClassName: local-path
  claimRef: {{namespace: default, name: data, uid: {uid}}}
  csi: {{driver: local.csi.apiary.dev, volumeHandle: pvc-{uid}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: topology.local.csi.apiary.dev/node, operator: In, values: [n1]}}]
"#
        ),
    );
    assert_eq!(wait_scheduled(&cp, "db"), "n1");

    // Bigger than any node has room for.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: huge}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 50Gi}}\n",
    );
    apply(&cp, &pod_using("greedy", "huge", ""));
    wait_unschedulable(
        &cp,
        "greedy",
        "0/2 nodes are available: 2 node(s) did not have enough free storage.",
    );
    assert!(
        get(&cp, &["pvc", "huge"])["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
            .is_null()
    );
}

#[test]
fn a_claim_made_before_any_default_class_gets_it_later_and_a_claim_whose_volume_goes_is_lost() {
    let cp = ControlPlane::start();
    cp.kubectl(&["delete", "sc", "local-path"]).success();
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: early}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    assert!(get(&cp, &["pvc", "early"])["spec"]["storageClassName"].is_null());
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "early",
        "no persistent volumes available for this claim and no storage class is set",
    );
    apply(
        &cp,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: late\n  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}\nprovisioner: example.com/late\n",
    );
    wait_for("the default class assigned", WAIT, || {
        (get(&cp, &["pvc", "early"])["spec"]["storageClassName"] == "late").then_some(())
    });

    apply(&cp, STATIC_VOLUMES);
    apply(&cp, &claim("data", "1Gi", "ReadWriteOnce", ""));
    wait_phase(&cp, &["pvc", "data"], "Bound");
    // The volume removed from under the claim (its protection lifted by hand).
    cp.kubectl(&[
        "patch",
        "pv",
        "pv-small",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .success();
    cp.kubectl(&["delete", "pv", "pv-small"]).success();
    wait_phase(&cp, &["pvc", "data"], "Lost");
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "data",
        "ClaimLost   Bound claim has lost its PersistentVolume. Data on the volume is lost!",
    );
}

#[test]
fn available_local_volumes_are_bound_where_the_pod_goes_under_wait_for_first_consumer() {
    let cp = ControlPlane::start();
    register_node(&cp, "n1");
    register_node(&cp, "n2");
    let local = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  capacity: {{storage: 1Gi}}\n  storageClassName: local-static\n  local: {{path: /mnt/disk}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]\n"
        )
    };
    apply(
        &cp,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: local-static}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n",
    );
    apply(&cp, &local("disk-n1", "n1"));
    apply(&cp, &local("disk-n2", "n2"));
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  storageClassName: local-static\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait_event(
        &cp,
        "PersistentVolumeClaim",
        "data",
        "waiting for first consumer to be created before binding",
    );
    apply(
        &cp,
        &pod_using(
            "db",
            "data",
            "  nodeSelector: {kubernetes.io/hostname: n2}\n",
        ),
    );
    assert_eq!(wait_scheduled(&cp, "db"), "n2");
    let claim = wait_phase(&cp, &["pvc", "data"], "Bound");
    assert_eq!(claim["spec"]["volumeName"], "disk-n2");
    assert_eq!(phase(&cp, &["pv", "disk-n1"]), "Available");

    // No volume left on n2 and nothing to provision with: the next claim's pod cannot go there.
    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: more}\nspec:\n  storageClassName: local-static\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    apply(
        &cp,
        &pod_using(
            "db2",
            "more",
            "  nodeSelector: {kubernetes.io/hostname: n2}\n",
        ),
    );
    wait_unschedulable(
        &cp,
        "db2",
        "0/2 nodes are available: 1 node(s) didn't find available persistent volumes to bind, 1 node(s) didn't match Pod's node affinity/selector.",
    );
}

fn can_i(cp: &ControlPlane, who: &[&str], what: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i"];
    args.extend_from_slice(what);
    args.extend_from_slice(who);
    let (_, out) = cp.kubectl(&args).outcome();
    out.trim().starts_with("yes")
}

#[test]
fn nodes_may_provision_and_publish_capacity_and_users_get_what_their_roles_say() {
    let cp = ControlPlane::start();
    let node = ["--as", "system:node:n1", "--as-group", "system:nodes"];
    for what in [
        &["create", "persistentvolumes"][..],
        &["delete", "persistentvolumes"],
        &["list", "persistentvolumeclaims", "--all-namespaces"],
        &["update", "persistentvolumeclaims/status", "-n", "default"],
        &[
            "create",
            "csistoragecapacities.storage.k8s.io",
            "-n",
            "kube-system",
        ],
        &[
            "update",
            "csistoragecapacities.storage.k8s.io",
            "-n",
            "kube-system",
        ],
        &["list", "storageclasses.storage.k8s.io"],
        &["get", "csidrivers.storage.k8s.io"],
        &["create", "csinodes.storage.k8s.io"],
    ] {
        assert!(can_i(&cp, &node, what), "a node may {what:?}");
    }
    for what in [
        &["create", "storageclasses.storage.k8s.io"][..],
        &["delete", "persistentvolumeclaims", "-n", "default"],
        &["delete", "csidrivers.storage.k8s.io"],
    ] {
        assert!(!can_i(&cp, &node, what), "a node may not {what:?}");
    }
    cp.kubectl(&["create", "namespace", "dev"]).success();
    cp.kubectl(&[
        "create",
        "rolebinding",
        "v",
        "--clusterrole=view",
        "--user=viewer",
        "-n",
        "dev",
    ])
    .success();
    cp.kubectl(&[
        "create",
        "rolebinding",
        "e",
        "--clusterrole=edit",
        "--user=editor",
        "-n",
        "dev",
    ])
    .success();
    let viewer = ["--as", "viewer"];
    let editor = ["--as", "editor"];
    assert!(can_i(
        &cp,
        &viewer,
        &["get", "persistentvolumeclaims", "-n", "dev"]
    ));
    assert!(!can_i(
        &cp,
        &viewer,
        &["create", "persistentvolumeclaims", "-n", "dev"]
    ));
    assert!(can_i(
        &cp,
        &editor,
        &["create", "persistentvolumeclaims", "-n", "dev"]
    ));
    assert!(!can_i(&cp, &editor, &["create", "persistentvolumes"]));
    let out = cp.kubectl(&["get", "pv", "--as", "stranger"]).failure();
    assert!(
        out.contains("persistentvolumes is forbidden: User \"stranger\" cannot list resource \"persistentvolumes\" in API group \"\" at the cluster scope"),
        "{out}"
    );
}

/// The local-path driver's writes are a node's own only: written from the attacker's side.
#[test]
fn a_node_writes_only_its_own_volumes_capacities_claims_and_csinode() {
    let cp = ControlPlane::start();
    let as_node = |node: &str, args: &[&str], stdin: Option<&str>| {
        let user = format!("system:node:{node}");
        let mut all = args.to_vec();
        all.extend_from_slice(&["--as", &user, "--as-group", "system:nodes"]);
        match stdin {
            Some(s) => cp.kubectl_stdin(&all, s),
            None => cp.kubectl(&all),
        }
    };
    let capacity = |node: &str| {
        format!(
            "apiVersion: storage.k8s.io/v1\nkind: CSIStorageCapacity\nmetadata: {{name: local-path-{node}, namespace: kube-system}}\nstorageClassName: local-path\ncapacity: 10Gi\nnodeTopology: {{matchLabels: {{topology.local.csi.apiary.dev/node: {node}}}}}\n"
        )
    };
    as_node("n1", &["create", "-f", "-"], Some(&capacity("n1"))).success();
    let out = as_node("n1", &["create", "-f", "-"], Some(&capacity("n2"))).failure();
    assert!(
        out.contains(
            "node \"n1\" can only write csistoragecapacities whose nodeTopology selects only itself"
        ),
        "{out}"
    );
    let out = as_node(
        "n1",
        &["create", "-f", "-"],
        Some("apiVersion: storage.k8s.io/v1\nkind: CSINode\nmetadata: {name: n2}\nspec: {drivers: []}\n"),
    )
    .failure();
    assert!(
        out.contains("can only access CSINode with the same name as the requesting node"),
        "{out}"
    );

    apply(
        &cp,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  annotations: {volume.kubernetes.io/selected-node: n1}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    let uid = get(&cp, &["pvc", "data"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let volume = |name: &str, node: &str, claim: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}\n  annotations: {{pv.kubernetes.io/provisioned-by: local.csi.apiary.dev}}\nspec:\n  accessModes: [ReadWriteOnce]\n  capacity: {{storage: 1Gi}}\n  persistentVolumeReclaimPolicy: Delete\n  storageClassName: local-path\n  claimRef: {{namespace: default, name: {claim}, uid: {uid}}}\n  csi: {{driver: local.csi.apiary.dev, volumeHandle: {name}}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions: [{{key: topology.local.csi.apiary.dev/node, operator: In, values: [{node}]}}]\n"
        )
    };
    let out = as_node(
        "n2",
        &["create", "-f", "-"],
        Some(&volume("stolen", "n1", "data")),
    )
    .failure();
    assert!(
        out.contains(
            "node \"n2\" can only write persistentvolumes whose nodeAffinity requires itself"
        ),
        "{out}"
    );
    let out = as_node(
        "n2",
        &["create", "-f", "-"],
        Some(&volume("hijack", "n2", "data")),
    )
    .failure();
    assert!(
        out.contains(
            "node \"n2\" can only provision persistentvolumes for claims selected for itself"
        ),
        "{out}"
    );
    as_node(
        "n1",
        &["create", "-f", "-"],
        Some(&volume(&format!("pvc-{uid}"), "n1", "data")),
    )
    .success();
    wait_phase(&cp, &["pvc", "data"], "Bound");
    let pv = format!("pvc-{uid}");
    let out = as_node("n2", &["delete", "pv", &pv], None).failure();
    assert!(
        out.contains("can only write persistentvolumes whose nodeAffinity requires itself"),
        "{out}"
    );
    let out = as_node("n2", &["annotate", "pvc", "data", "x=y"], None).failure();
    assert!(
        out.contains("node \"n2\" can only write persistentvolumeclaims selected for itself"),
        "{out}"
    );
    as_node("n1", &["annotate", "pvc", "data", "x=y"], None).success();
    // Moving its own volume to another node is refused too.
    let out = as_node(
        "n1",
        &["patch", "pv", &pv, "--type=merge", "-p",
          r#"{"spec":{"nodeAffinity":{"required":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"topology.local.csi.apiary.dev/node","operator":"In","values":["n2"]}]}]}}}}"#],
        None,
    )
    .failure();
    assert!(
        out.contains(
            "node \"n1\" can only write persistentvolumes whose nodeAffinity requires itself"
        ),
        "{out}"
    );
}
