//! End-to-end: kubectl's `create` subcommands, `run` and `expose`, whose typed clients send
//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) rather than JSON. Each object is
//! read back as JSON to check that its fields survived the decoding.

use crate::support;

use serde_json::{Value, json};
use support::ControlPlane;

fn get(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    cp.kubectl_json(&all)
}

#[test]
fn create_namespace_configmap_secret_and_serviceaccount() {
    let cp = ControlPlane::start();
    // Protobuf both ways, as with kube-apiserver.
    let log = cp
        .kubectl(&["create", "namespace", "shop", "-v=8"])
        .success_log();
    let content_types: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("Content-Type: ").nth(1))
        .collect();
    assert_eq!(
        content_types,
        [
            "application/vnd.kubernetes.protobuf",
            "application/vnd.kubernetes.protobuf"
        ],
        "the request's and the response's: {log}"
    );
    assert_eq!(
        get(&cp, &["namespace", "shop"])["status"]["phase"],
        "Active"
    );
    // The error comes back as a protobuf Status, which kubectl reads as it reads
    // kube-apiserver's.
    let again = cp.kubectl(&["create", "namespace", "shop"]).failure();
    assert!(
        again.contains(r#"Error from server (AlreadyExists): namespaces "shop" already exists"#),
        "{again}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.conf");
    std::fs::write(&file, "listen 8080\n").unwrap();
    let from_file = format!("--from-file={}", file.display());
    cp.kubectl(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "shop",
        "--from-literal",
        "a=b",
        &from_file,
    ])
    .success();
    let cm = get(&cp, &["configmap", "settings", "-n", "shop"]);
    assert_eq!(
        cm["data"],
        json!({ "a": "b", "app.conf": "listen 8080\n" }),
        "{cm}"
    );

    cp.kubectl(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "shop",
        "--from-literal=password=s3cret",
    ])
    .success();
    let secret = get(&cp, &["secret", "creds", "-n", "shop"]);
    // Secret data are bytes in protobuf and base64 in JSON.
    assert_eq!(secret["data"]["password"], "czNjcmV0", "{secret}");
    assert_eq!(secret["type"], "Opaque");

    cp.kubectl(&["create", "serviceaccount", "builder", "-n", "shop"])
        .success();
    let sa = get(&cp, &["serviceaccount", "builder", "-n", "shop"]);
    assert_eq!(sa["metadata"]["namespace"], "shop");
    assert!(sa["metadata"]["creationTimestamp"].is_string(), "{sa}");
}

#[test]
fn create_deployment_job_and_cronjob() {
    let cp = ControlPlane::start();
    cp.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=localhost/busybox:latest",
        "--replicas=2",
        "--port=8080",
    ])
    .success();
    let deployment = get(&cp, &["deployment", "web"]);
    assert_eq!(deployment["spec"]["replicas"], 2, "{deployment}");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({ "app": "web" })
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "localhost/busybox:latest");
    assert_eq!(container["ports"][0]["containerPort"], 8080);

    // `--replicas=0` is a pointer field explicitly zero: it must not become the default 1.
    cp.kubectl(&[
        "create",
        "deployment",
        "idle",
        "--image=localhost/busybox:latest",
        "--replicas=0",
    ])
    .success();
    assert_eq!(get(&cp, &["deployment", "idle"])["spec"]["replicas"], 0);

    cp.kubectl(&[
        "create",
        "job",
        "once",
        "--image=localhost/busybox:latest",
        "--",
        "echo",
        "hello",
    ])
    .success();
    let job = get(&cp, &["job", "once"]);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["echo", "hello"]),
        "{job}"
    );
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");

    cp.kubectl(&[
        "create",
        "cronjob",
        "nightly",
        "--image=localhost/busybox:latest",
        "--schedule=0 3 * * *",
        "--",
        "date",
    ])
    .success();
    let cronjob = get(&cp, &["cronjob", "nightly"]);
    assert_eq!(cronjob["spec"]["schedule"], "0 3 * * *", "{cronjob}");
    assert_eq!(
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );

    // A job from the cronjob: kubectl reads the cronjob, then creates the job in protobuf.
    cp.kubectl(&["create", "job", "manual", "--from=cronjob/nightly"])
        .success();
    let manual = get(&cp, &["job", "manual"]);
    assert_eq!(
        manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual",
        "{manual}"
    );
}

#[test]
fn create_roles_and_bindings() {
    let cp = ControlPlane::start();
    cp.kubectl(&[
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods,configmaps",
    ])
    .success();
    let role = get(&cp, &["role", "reader"]);
    assert_eq!(role["rules"][0]["verbs"], json!(["get", "list"]), "{role}");
    assert_eq!(role["rules"][0]["resources"], json!(["pods", "configmaps"]));

    cp.kubectl(&[
        "create",
        "rolebinding",
        "read-it",
        "--role=reader",
        "--user=jane",
        "--serviceaccount=default:builder",
    ])
    .success();
    let binding = get(&cp, &["rolebinding", "read-it"]);
    assert_eq!(binding["roleRef"]["kind"], "Role", "{binding}");
    assert_eq!(binding["roleRef"]["name"], "reader");
    let subjects = binding["subjects"].as_array().unwrap();
    assert!(
        subjects.contains(
            &json!({ "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane" })
        ),
        "{binding}"
    );
    assert!(
        subjects.contains(
            &json!({ "kind": "ServiceAccount", "name": "builder", "namespace": "default" })
        ),
        "{binding}"
    );

    cp.kubectl(&[
        "create",
        "clusterrole",
        "node-reader",
        "--verb=get",
        "--resource=nodes",
        "--non-resource-url=/healthz",
        "--verb=get",
    ])
    .success();
    let clusterrole = get(&cp, &["clusterrole", "node-reader"]);
    let urls: Vec<&Value> = clusterrole["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.get("nonResourceURLs"))
        .collect();
    assert_eq!(urls, [&json!(["/healthz"])], "{clusterrole}");

    cp.kubectl(&[
        "create",
        "clusterrolebinding",
        "read-nodes",
        "--clusterrole=node-reader",
        "--group=ops",
    ])
    .success();
    let crb = get(&cp, &["clusterrolebinding", "read-nodes"]);
    assert_eq!(crb["subjects"][0]["name"], "ops", "{crb}");
    assert_eq!(crb["roleRef"]["kind"], "ClusterRole");
    // The binding grants what it says: jane may now list pods in default.
    let can = cp
        .kubectl(&["auth", "can-i", "list", "pods", "--as=jane"])
        .output();
    assert_eq!(can.as_deref().map(str::trim), Some("yes"));
}

#[test]
fn create_service_run_a_pod_and_expose_a_deployment() {
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "service", "clusterip", "api", "--tcp=80:8080"])
        .success();
    let service = get(&cp, &["service", "api"]);
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], 80, "{service}");
    // An IntOrString on the wire, a number in JSON.
    assert_eq!(port["targetPort"], 8080, "{service}");
    assert!(service["spec"]["clusterIP"].is_string(), "{service}");

    cp.kubectl(&[
        "run",
        "shell",
        "--image=localhost/busybox:latest",
        "--labels=app=shell,tier=debug",
        "--env=GREETING=hi",
        "--port=9090",
        "--",
        "sleep",
        "3600",
    ])
    .success();
    let pod = get(&cp, &["pod", "shell"]);
    assert_eq!(
        pod["metadata"]["labels"],
        json!({ "app": "shell", "tier": "debug" })
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["sleep", "3600"]), "{pod}");
    assert_eq!(
        container["env"],
        json!([{ "name": "GREETING", "value": "hi" }])
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);

    cp.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=localhost/busybox:latest",
        "--port=8080",
    ])
    .success();
    cp.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=http-alt",
        "--name=web",
    ])
    .success();
    let exposed = get(&cp, &["service", "web"]);
    assert_eq!(
        exposed["spec"]["selector"],
        json!({ "app": "web" }),
        "{exposed}"
    );
    assert_eq!(exposed["spec"]["ports"][0]["port"], 80);
    assert_eq!(exposed["spec"]["ports"][0]["targetPort"], "http-alt");

    cp.kubectl(&["expose", "pod", "shell", "--name=shell"])
        .success();
    let from_pod = get(&cp, &["service", "shell"]);
    assert_eq!(from_pod["spec"]["ports"][0]["port"], 9090, "{from_pod}");
    assert_eq!(from_pod["spec"]["ports"][0]["targetPort"], 9090);
}

/// Kinds Apiary does not serve fail as kube-apiserver fails them for a group it lacks: not
/// with a 415 for the body.
#[test]
fn create_of_an_unserved_kind_fails_as_not_found() {
    let cp = ControlPlane::start();
    for args in [
        &["create", "quota", "q", "--hard=pods=2"][..],
        &["create", "priorityclass", "high", "--value=1000"],
        &[
            "create",
            "poddisruptionbudget",
            "pdb",
            "--selector=app=web",
            "--min-available=1",
        ],
        &["create", "ingress", "in", "--rule=example.com/=web:80"],
    ] {
        let out = cp.kubectl(args).failure();
        assert!(
            !out.contains("415") && !out.contains("unknown format"),
            "{args:?}: {out}"
        );
        assert!(
            out.contains("the server could not find the requested resource")
                || out.contains("NotFound")
                || out.contains("no matches for kind"),
            "{args:?}: {out}"
        );
    }
}
