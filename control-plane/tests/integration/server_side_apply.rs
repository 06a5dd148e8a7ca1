//! Server-side apply through the real kubectl: `managedFields` on every write, two managers
//! sharing and fighting over fields, `--force-conflicts`, fields an applier drops, map lists
//! merged per item, and the dry-run and diff forms.

use crate::support;

use serde_json::Value;
use support::ControlPlane;

fn config_map(data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {data}\n")
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_owned(),
                e["operation"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `kubectl patch configmap settings --type=<kind> -p <body>`, which must succeed.
fn patch(cp: &ControlPlane, kind: &str, body: &str) {
    cp.kubectl(&[
        "patch",
        "configmap",
        "settings",
        &format!("--type={kind}"),
        "-p",
        body,
    ])
    .success();
}

fn get(cp: &ControlPlane) -> Value {
    cp.kubectl_json(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "json",
        "--show-managed-fields",
    ])
}

#[test]
fn two_managers_share_fields_conflict_and_force() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &config_map("{mode: fast, extra: x}"),
    )
    .success();
    let created = get(&cp);
    assert_eq!(created["data"]["mode"], "fast");
    assert_eq!(managers(&created), [("kubectl".into(), "Apply".into())]);
    let fields = &created["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(
        fields["f:data"]["f:mode"],
        serde_json::json!({}),
        "{fields}"
    );

    // A second manager setting the same value shares it; another value is a conflict.
    cp.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=ops", "-f", "-"],
        &config_map("{mode: fast}"),
    )
    .success();
    let out = cp
        .kubectl_stdin(
            &["apply", "--server-side", "--field-manager=ops", "-f", "-"],
            &config_map("{mode: slow}"),
        )
        .failure();
    assert!(
        out.contains(
            r#"Apply failed with 1 conflict: conflict with "kubectl" using v1: .data.mode"#
        ),
        "{out}"
    );
    assert_eq!(
        get(&cp)["data"]["mode"],
        "fast",
        "a conflict changes nothing"
    );

    cp.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &config_map("{mode: slow}"),
    )
    .success();
    let forced = get(&cp);
    assert_eq!(forced["data"]["mode"], "slow");
    // kubectl lost `mode` to ops, and may now apply a config without it without conflict.
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &config_map("{extra: x}"),
    )
    .success();
    assert_eq!(get(&cp)["data"]["mode"], "slow");
}

#[test]
fn fields_an_applier_stops_setting_are_removed() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &config_map("{a: '1', b: '2'}"),
    )
    .success();
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &config_map("{a: '1'}"),
    )
    .success();
    let now = get(&cp);
    assert_eq!(now["data"], serde_json::json!({"a": "1"}), "{now}");

    // An ordinary write by another client is tracked as an Update, and that field stays
    // when the applier's config never names it.
    patch(&cp, "merge", r#"{"data":{"c":"3"}}"#);
    let patched = get(&cp);
    assert!(
        managers(&patched).contains(&("kubectl-patch".into(), "Update".into())),
        "{:?}",
        managers(&patched)
    );
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &config_map("{a: '2'}"),
    )
    .success();
    assert_eq!(get(&cp)["data"], serde_json::json!({"a": "2", "c": "3"}));
}

#[test]
fn apply_dry_run_and_diff_change_nothing() {
    let cp = ControlPlane::start();
    cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &config_map("{mode: fast}"),
    )
    .success();
    let answer: Value = serde_json::from_str(
        &cp.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            &config_map("{mode: slow}"),
        )
        .success(),
    )
    .unwrap();
    assert_eq!(answer["data"]["mode"], "slow");
    let out = cp
        .kubectl_stdin(
            &["diff", "--server-side", "-f", "-"],
            &config_map("{mode: slow}"),
        )
        .failure();
    assert!(
        out.contains("-  mode: fast") && out.contains("+  mode: slow"),
        "{out}"
    );
    assert_eq!(get(&cp)["data"]["mode"], "fast");
}

#[test]
fn map_lists_merge_per_item_between_managers() {
    let cp = ControlPlane::start();
    let deployment = |container: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - {{name: {container}, image: localhost/busybox:latest}}
"#
        )
    };
    cp.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=team-a",
            "-f",
            "-",
        ],
        &deployment("web"),
    )
    .success();
    cp.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=team-b",
            "-f",
            "-",
        ],
        &deployment("sidecar"),
    )
    .success();
    let live = cp.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
    let names: Vec<&str> = live["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["web", "sidecar"],
        "both managers' containers are kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_without_a_field_manager_is_refused() {
    let cp = ControlPlane::start();
    let url = format!(
        "https://{}/api/v1/namespaces/default/configmaps/x",
        cp.server_addr()
    );
    let response = cp
        .https_client()
        .patch(url)
        .bearer_auth(cp.token())
        .header("Content-Type", "application/apply-patch+yaml")
        .body("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let status: Value = response.json().await.unwrap();
    assert_eq!(
        status["details"]["causes"][0]["field"], "fieldManager",
        "{status}"
    );
}

#[test]
fn ports_of_two_protocols_are_applied_as_two_items() {
    let cp = ControlPlane::start();
    let dns = |udp_target: u16| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: dns}}
spec:
  selector: {{app: dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: {udp_target}}}
  - {{name: dns-tcp, port: 53, targetPort: 53}}
"#
        )
    };
    cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &dns(53))
        .success();
    // Applied again with one port changed: still two ports, each kept apart by protocol.
    cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &dns(5353))
        .success();
    let service = cp.kubectl_json(&[
        "get",
        "service",
        "dns",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let ports = service["spec"]["ports"].as_array().unwrap();
    let summary: Vec<(String, i64, String)> = ports
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().unwrap().to_owned(),
                p["port"].as_i64().unwrap(),
                p["targetPort"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("UDP".to_owned(), 53, "5353".to_owned()),
            ("TCP".to_owned(), 53, "53".to_owned())
        ],
        "{service}"
    );
    let fields =
        service["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"].to_string();
    assert!(
        fields.contains(r#"k:{\"port\":53,\"protocol\":\"UDP\"}"#),
        "{fields}"
    );
    assert!(
        fields.contains(r#"k:{\"port\":53,\"protocol\":\"TCP\"}"#),
        "{fields}"
    );
}

/// As in Kubernetes, a write that would store what is already there writes nothing: an apply,
/// patches and a replace that change nothing keep the resource version, and a watcher
/// hears only of the write that changed something. A replace pinned to an older version is
/// still a conflict.
#[test]
fn writes_that_change_nothing_keep_the_resource_version() {
    let cp = ControlPlane::start();
    let apply = || {
        cp.kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            &config_map("{mode: fast}"),
        )
        .success();
    };
    apply();
    let first = get(&cp);
    let version = first["metadata"]["resourceVersion"].clone();
    let mut watch = cp.kubectl_spawn(&[
        "get",
        "configmap",
        "settings",
        "--watch-only",
        "--output-watch-events",
        "-o",
        "custom-columns=EVENT:type,MODE:object.data.mode",
    ]);
    // The watch is established before the writes below (kubectl prints nothing until then).
    std::thread::sleep(std::time::Duration::from_secs(1));
    apply();
    patch(&cp, "merge", r#"{"data":{"mode":"fast"}}"#);
    patch(
        &cp,
        "json",
        r#"[{"op":"replace","path":"/data/mode","value":"fast"}]"#,
    );
    let mut unchanged = get(&cp);
    assert_eq!(unchanged, first, "nothing changed, not even managedFields");
    unchanged["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    cp.kubectl_stdin(&["replace", "-f", "-"], &unchanged.to_string())
        .success();
    assert_eq!(get(&cp)["metadata"]["resourceVersion"], version);

    // The first change is a write, with a new version, and the only event the watcher sees.
    patch(&cp, "merge", r#"{"data":{"mode":"slow"}}"#);
    let seen = watch.read_until(|out| out.contains("slow"), 20);
    assert_eq!(
        seen.lines().filter(|l| l.contains("MODIFIED")).count(),
        1,
        "{seen}"
    );
    assert!(!seen.contains("fast"), "{seen}");
    assert_ne!(get(&cp)["metadata"]["resourceVersion"], version);

    // Back to `fast`, replaced at the version from before `slow`: a conflict, changed or not.
    let out = cp
        .kubectl_stdin(&["replace", "-f", "-"], &unchanged.to_string())
        .failure();
    assert!(
        out.contains("Conflict") || out.contains("modified"),
        "{out}"
    );
    assert_eq!(get(&cp)["data"]["mode"], "slow");
}
