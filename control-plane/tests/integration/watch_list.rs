//! Watch bookmarks and the watch-list protocol (`sendInitialEvents`), as client-go's
//! reflectors use them: the current objects as ADDED events, then a BOOKMARK marking their
//! end, then changes; and kube-apiserver's 422 when the request lacks what the protocol needs.

use crate::support;

use serde_json::Value;
use support::ControlPlane;

async fn watch_lines(cp: &ControlPlane, query: &str) -> (u16, Vec<Value>) {
    let url = format!(
        "https://{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=2&{query}",
        cp.server_addr()
    );
    let response = cp
        .https_client()
        .get(url)
        .bearer_auth(cp.token())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    if status != 200 {
        return (status, vec![serde_json::from_str(&text).unwrap()]);
    }
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (status, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn send_initial_events_lists_then_bookmarks_the_end_then_watches() {
    let cp = ControlPlane::start();
    for name in ["a", "b", "c"] {
        cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"),
        )
        .success();
    }
    let later = {
        let kubeconfig = cp.kubeconfig();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            let status = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["create", "configmap", "later"])
                .status()
                .unwrap();
            assert!(status.success());
        })
    };
    let (status, events) = watch_lines(
        &cp,
        "sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&resourceVersion=",
    )
    .await;
    later.await.unwrap();
    assert_eq!(status, 200);
    let end = events
        .iter()
        .position(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark ends the initial events");
    let bookmark = &events[end];
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(bookmark["object"]["kind"], "ConfigMap");
    let names = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "ADDED")
            .map(|e| e["object"]["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let initial = names(&events[..end]);
    for name in ["a", "b", "c"] {
        assert!(initial.contains(&name.to_owned()), "{initial:?}");
    }
    // The bookmark's version covers every initial object.
    let rv = |e: &Value| {
        e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(events[..end].iter().all(|e| rv(e) <= rv(bookmark)));
    assert_eq!(names(&events[end + 1..]), ["later"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_list_without_bookmarks_or_not_older_than_is_refused() {
    let cp = ControlPlane::start();
    let (status, body) = watch_lines(&cp, "sendInitialEvents=true").await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body[0]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["resourceVersionMatch", "allowWatchBookmarks"]);
    // An ordinary watch sends no bookmark it was not asked for.
    let (status, events) = watch_lines(&cp, "").await;
    assert_eq!(status, 200);
    assert!(events.iter().all(|e| e["type"] != "BOOKMARK"));
}
