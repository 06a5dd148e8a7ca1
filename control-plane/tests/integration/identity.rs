//! Security identities end to end: the identity controller of a started control plane
//! allocates, shares, moves and collects them as pods and namespaces change (seen through the
//! real kubectl); the API server validates them; node agents follow them over `WatchDataplane`.

use crate::support;

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use apiary_agent_api::v1::{WatchDataplaneRequest, object_event::Type};
use apiary_node_agent::agent::identities::IdentityCache;
use futures::StreamExt as _;
use serde_json::{Value, json};
use support::ControlPlane;

/// Identities unused for this long are deleted (the default is 60 s).
const GRACE_SECONDS: &str = "3";

type Labels = BTreeMap<String, String>;

fn start() -> ControlPlane {
    ControlPlane::start_with(&args())
}

fn args() -> [&'static str; 4] {
    [
        "--security-identity-gc-seconds",
        GRACE_SECONDS,
        "--identity",
        "identity-test",
    ]
}

fn wait_for<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn labels(entries: &[(&str, &str)]) -> Labels {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The label set of a pod with `pod` labels in namespace `ns` labelled `ns_labels` (besides
/// the name label every namespace has).
fn set(ns: &str, pod: &[(&str, &str)], ns_labels: &[(&str, &str)]) -> Labels {
    let mut ns_labels = labels(ns_labels);
    ns_labels.insert("kubernetes.io/metadata.name".to_owned(), ns.to_owned());
    apiary_api::apiary_v1::security_labels(ns, &labels(pod), &ns_labels)
}

/// Every SecurityIdentity: number → labels.
fn identities(cp: &ControlPlane) -> BTreeMap<u32, Labels> {
    let list = cp.kubectl_json(&["get", "securityidentities", "-o", "json"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let id = o["metadata"]["name"].as_str().unwrap().parse().unwrap();
            (id, serde_json::from_value(o["labels"].clone()).unwrap())
        })
        .collect()
}

/// The number of the identity of `labels`, once there is exactly one.
fn wait_identity(cp: &ControlPlane, labels: &Labels) -> u32 {
    wait_for(20, &format!("an identity for {labels:?}"), || {
        let ids: Vec<u32> = identities(cp)
            .into_iter()
            .filter(|(_, l)| l == labels)
            .map(|(id, _)| id)
            .collect();
        (ids.len() == 1).then(|| ids[0])
    })
}

fn namespace(cp: &ControlPlane, name: &str, team: &str) {
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    team: {team}\n"),
    )
    .success();
}

fn pod(cp: &ControlPlane, ns: &str, name: &str, app: &str, host_network: bool) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"hostNetwork": host_network,
            "containers": [{"name": "c", "image": "localhost/busybox:latest"}]},
    });
    cp.kubectl_stdin(&["apply", "-f", "-"], &pod.to_string())
        .success();
}

#[test]
fn identities_follow_pod_and_namespace_labels_and_are_collected() {
    let cp = start();
    namespace(&cp, "a", "x");
    namespace(&cp, "b", "x");
    pod(&cp, "a", "web-1", "web", false);
    pod(&cp, "a", "web-2", "web", false);
    pod(&cp, "a", "db", "db", false);
    pod(&cp, "b", "web-1", "web", false);
    pod(&cp, "a", "node-exporter", "exporter", true);

    let a_web = wait_identity(&cp, &set("a", &[("app", "web")], &[("team", "x")]));
    let a_db = wait_identity(&cp, &set("a", &[("app", "db")], &[("team", "x")]));
    // Same pod labels in another namespace: never the same identity.
    let b_web = wait_identity(&cp, &set("b", &[("app", "web")], &[("team", "x")]));
    let mut ids = vec![a_web, a_db, b_web];
    ids.sort_unstable();
    assert_eq!(ids, [256, 257, 258], "the lowest free ids, one per set");
    // Pods with equal sets share theirs; the hostNetwork pod is the host and has none.
    let all = identities(&cp);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(
        all.values()
            .all(|l| l.get("k8s:app").map(String::as_str) != Some("exporter"))
    );

    // A relabelled pod moves to the identity of its new set; its old one is kept for the
    // grace period (a restarting pod keeps its number), then collected.
    cp.kubectl(&["label", "pod", "-n", "a", "db", "app=web", "--overwrite"])
        .success();
    thread::sleep(Duration::from_secs(1));
    assert!(identities(&cp).contains_key(&a_db), "kept during the grace");
    wait_for(20, "the unused identity to be collected", || {
        (!identities(&cp).contains_key(&a_db)).then_some(())
    });
    assert_eq!(identities(&cp).len(), 2);

    // A namespace relabel gives its pods a new set, and so a new identity: the lowest free one
    // (the collected one's number).
    cp.kubectl(&["label", "namespace", "b", "team=y", "--overwrite"])
        .success();
    let b_web_y = wait_identity(&cp, &set("b", &[("app", "web")], &[("team", "y")]));
    assert_eq!(b_web_y, a_db, "the freed number is reused");
    wait_for(20, "the namespace's old identity to be collected", || {
        (!identities(&cp).contains_key(&b_web)).then_some(())
    });
    // Namespace a's pods kept theirs.
    assert_eq!(
        identities(&cp)[&a_web],
        set("a", &[("app", "web")], &[("team", "x")])
    );

    // Finished pods need none: the last pod of a set turning Succeeded frees it.
    cp.kubectl(&[
        "patch",
        "pod",
        "-n",
        "b",
        "web-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ])
    .success();
    wait_for(20, "the finished pod's identity to be collected", || {
        (!identities(&cp).contains_key(&b_web_y)).then_some(())
    });

    // Deleting the pods frees the rest.
    cp.kubectl(&[
        "delete",
        "pods",
        "-n",
        "a",
        "--all",
        "--grace-period=0",
        "--force",
    ])
    .success();
    wait_for(20, "every identity to be collected", || {
        identities(&cp).is_empty().then_some(())
    });
}

#[test]
fn identities_survive_a_restart_and_new_sets_do_not_collide() {
    let mut cp = start();
    namespace(&cp, "a", "x");
    pod(&cp, "a", "web", "web", false);
    pod(&cp, "a", "db", "db", false);
    let web = wait_identity(&cp, &set("a", &[("app", "web")], &[("team", "x")]));
    let db = wait_identity(&cp, &set("a", &[("app", "db")], &[("team", "x")]));
    let before = identities(&cp);

    cp.restart_with(&args());
    pod(&cp, "a", "cache", "cache", false);
    let cache = wait_identity(&cp, &set("a", &[("app", "cache")], &[("team", "x")]));
    let after = identities(&cp);
    assert_eq!(after[&web], before[&web]);
    assert_eq!(after[&db], before[&db]);
    assert_eq!(
        after.len(),
        3,
        "no second identity for a known set: {after:#?}"
    );
    assert!(cache != web && cache != db);
    assert_eq!(cache, 258);
}

#[test]
fn a_burst_of_pods_gets_one_identity_per_set_and_duplicates_are_collected() {
    let cp = start();
    namespace(&cp, "a", "x");
    // 20 pods of 5 sets at once.
    let pods: Vec<Value> = (0..20)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": "a",
                    "labels": {"app": format!("app{}", i % 5)}},
                "spec": {"containers": [{"name": "c", "image": "localhost/busybox:latest"}]}})
        })
        .collect();
    let stream: Vec<String> = pods.iter().map(Value::to_string).collect();
    cp.kubectl_stdin(&["apply", "-f", "-"], &stream.join("\n"))
        .success();
    for i in 0..5 {
        wait_identity(
            &cp,
            &set("a", &[("app", &format!("app{i}"))], &[("team", "x")]),
        );
    }
    let all = identities(&cp);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        [256, 257, 258, 259, 260],
        "{all:#?}"
    );

    // A second identity for a set in use (made by hand): the lowest stays the one, the other
    // is collected after the grace period.
    let app0 = set("a", &[("app", "app0")], &[("team", "x")]);
    let kept = all
        .iter()
        .find(|(_, l)| **l == app0)
        .map(|(id, _)| *id)
        .unwrap();
    let duplicate = json!({"apiVersion": "apiary.dev/v1", "kind": "SecurityIdentity",
        "metadata": {"name": "4000"}, "labels": app0});
    cp.kubectl_stdin(&["create", "-f", "-"], &duplicate.to_string())
        .success();
    wait_for(20, "the duplicate to be collected", || {
        (!identities(&cp).contains_key(&4000)).then_some(())
    });
    assert_eq!(identities(&cp).get(&kept), Some(&app0));
    assert_eq!(identities(&cp).len(), 5);
}

#[test]
fn kubectl_shows_identities_and_the_server_rejects_invalid_ones() {
    let cp = start();
    namespace(&cp, "shop", "x");
    pod(&cp, "shop", "web", "web", false);
    let id = wait_identity(&cp, &set("shop", &[("app", "web")], &[("team", "x")]));

    let table = cp.kubectl(&["get", "secid"]).success();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "NAMESPACE", "LABELS", "AGE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..3],
        [id.to_string().as_str(), "shop", "app=web"],
        "{table}"
    );
    let wide = cp.kubectl(&["get", "secid", "-o", "wide"]).success();
    assert!(
        wide.contains("NAMESPACE LABELS") && wide.contains("team=x"),
        "{wide}"
    );
    let by_name = cp
        .kubectl(&["get", "securityidentities.apiary.dev", &id.to_string()])
        .success();
    assert!(by_name.contains("shop"), "{by_name}");

    let create = |name: &str, labels: Value| {
        let object = json!({"apiVersion": "apiary.dev/v1", "kind": "SecurityIdentity",
            "metadata": {"name": name}, "labels": labels});
        cp.kubectl_stdin(&["create", "-f", "-"], &object.to_string())
            .failure()
    };
    let out = create("12", json!({"apiary:namespace": "x"}));
    assert!(
        out.contains(r#"metadata.name: Invalid value: "12": must be a decimal number between 256 and 16777215"#),
        "{out}"
    );
    let out = create("16777216", json!({"apiary:namespace": "x"}));
    assert!(out.contains("metadata.name: Invalid value"), "{out}");
    let out = create("900", json!({}));
    assert!(out.contains("labels: Required value"), "{out}");
    let out = create("900", json!({"app": "web"}));
    assert!(out.contains("labels[app]: Invalid value"), "{out}");

    // Labels are immutable: the 422 names the field.
    let out = cp
        .kubectl(&[
            "patch",
            "secid",
            &id.to_string(),
            "--type=merge",
            "-p",
            r#"{"labels":{"k8s:app":"db"}}"#,
        ])
        .failure();
    assert!(out.contains("labels: Invalid value"), "{out}");
    assert!(out.contains("field is immutable"), "{out}");
    // The same error as a Kubernetes Status.
    let status = cp
        .kubectl(&[
            "replace",
            "--raw",
            &format!("/apis/apiary.dev/v1/securityidentities/{id}"),
            "-f",
            "-",
        ])
        .with_stdin(
            &json!({"apiVersion": "apiary.dev/v1", "kind": "SecurityIdentity",
                "metadata": {"name": id.to_string()}, "labels": {"apiary:namespace": "other"}})
            .to_string(),
        )
        .failure();
    assert!(
        status.contains("Invalid") || status.contains("422"),
        "{status}"
    );
    assert!(status.contains("field is immutable"), "{status}");
}

async fn agent_client(cp: &ControlPlane) -> apiary_agent_api::Client {
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let token = cp.token();
    let ca = std::fs::read_to_string(cp.data_path().join("pki/ca.crt")).unwrap();
    apiary_agent_api::connect(server, &ca, &token)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_follow_identities_over_the_data_plane_stream() {
    let cp = start();
    namespace(&cp, "a", "x");
    pod(&cp, "a", "web", "web", false);
    cp.kubectl(&[
        "patch",
        "pod",
        "-n",
        "a",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"10.244.3.7","podIPs":[{"ip":"10.244.3.7"}]}}"#,
    ])
    .success();
    let web = wait_identity(&cp, &set("a", &[("app", "web")], &[("team", "x")]));

    let mut agent = agent_client(&cp).await;
    // Every data plane kind by default, SecurityIdentity among them.
    let mut events = agent
        .watch_dataplane(WatchDataplaneRequest { kinds: vec![] })
        .await
        .unwrap()
        .into_inner();
    let mut cache = IdentityCache::new();
    let ip: std::net::IpAddr = "10.244.3.7".parse().unwrap();
    let mut synced = 0;
    let mut seen_identity = false;
    // One SYNCED per kind; then the cache knows the pod's identity.
    while synced < 7 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("no error");
        if event.r#type == Type::Synced as i32 {
            synced += 1;
            continue;
        }
        seen_identity |= event.kind == "SecurityIdentity";
        cache.apply(&event).unwrap();
    }
    assert!(seen_identity);
    assert_eq!(cache.identity_of_pod("a", "web"), Some(web));
    assert_eq!(cache.identity_of_ip(ip), Some(web));
    assert_eq!(cache.take_changes().upserts, vec![(ip, web)]);

    // A relabel: the stream brings the pod change and the new identity.
    cp.kubectl(&["label", "pod", "-n", "a", "web", "app=api", "--overwrite"])
        .success();
    let api = wait_identity(&cp, &set("a", &[("app", "api")], &[("team", "x")]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.identity_of_ip(ip) != Some(api) {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the relabel reaches the stream")
            .unwrap()
            .unwrap();
        cache.apply(&event).unwrap();
    }
    assert_eq!(cache.take_changes().upserts, vec![(ip, api)]);
}
