//! End-to-end: LoadBalancer Service addresses from `--loadbalancer-pool`, through the real
//! `kubectl` against a control plane on loopback.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::{ControlPlane, items, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// A Service of `type` with one port; `extra` is more YAML under `spec` (indented 2), and
/// `annotations` YAML under `metadata.annotations`.
fn service(name: &str, type_: &str, extra: &str, annotations: &str) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n    {annotations}\n")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{annotations}spec:\n  type: {type_}\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n{extra}"
    )
}

fn lb(name: &str) -> String {
    service(name, "LoadBalancer", "", "")
}

fn apply(cp: &ControlPlane, yaml: &str) {
    cp.kubectl_stdin(&["apply", "-f", "-"], yaml).success();
}

fn get(cp: &ControlPlane, name: &str) -> Value {
    cp.kubectl_json(&["get", "svc", name, "-o", "json"])
}

/// The addresses in the Service's status.
fn ips(cp: &ControlPlane, name: &str) -> Vec<String> {
    get(cp, name)["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(str::to_owned))
        .collect()
}

fn wait_ips(cp: &ControlPlane, name: &str, want: &[&str]) {
    wait_for(&format!("{name} to get {want:?}"), WAIT, || {
        (ips(cp, name) == want).then_some(())
    });
}

/// The messages of the events with `reason` about the Service `name`.
fn events(cp: &ControlPlane, name: &str, reason: &str) -> Vec<Value> {
    items(&cp.kubectl_json(&["get", "events", "-o", "json"]))
        .into_iter()
        .filter(|e| {
            e["involvedObject"]["kind"] == "Service"
                && e["involvedObject"]["name"] == name
                && e["reason"] == reason
        })
        .collect()
}

fn wait_event(cp: &ControlPlane, name: &str, reason: &str) -> Value {
    wait_for(&format!("a {reason} event about {name}"), WAIT, || {
        events(cp, name, reason).into_iter().next()
    })
}

fn external_ip_column(cp: &ControlPlane, name: &str) -> String {
    let table = cp.kubectl(&["get", "svc", name, "--no-headers"]).success();
    // NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE
    table
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no EXTERNAL-IP column in {table:?}"))
        .to_owned()
}

#[test]
fn services_get_the_lowest_free_addresses_or_the_ones_they_ask_for() {
    let cp = ControlPlane::start_with(&["--loadbalancer-pool", "10.123.64.0/24"]);
    apply(&cp, &lb("first"));
    wait_ips(&cp, "first", &["10.123.64.1"]);
    apply(&cp, &lb("second"));
    wait_ips(&cp, "second", &["10.123.64.2"]);

    let first = get(&cp, "first");
    assert_eq!(
        first["status"]["loadBalancer"]["ingress"],
        serde_json::json!([{ "ip": "10.123.64.1", "ipMode": "VIP" }])
    );
    let event = wait_event(&cp, "first", "IPAllocated");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["message"], "Assigned IP [\"10.123.64.1\"]");
    assert_eq!(external_ip_column(&cp, "first"), "10.123.64.1");

    // spec.loadBalancerIP, and the annotation (with two addresses).
    apply(
        &cp,
        &service(
            "asks",
            "LoadBalancer",
            "  loadBalancerIP: 10.123.64.50\n",
            "",
        ),
    );
    wait_ips(&cp, "asks", &["10.123.64.50"]);
    apply(
        &cp,
        &service(
            "annotated",
            "LoadBalancer",
            "",
            "lbipam.apiary.dev/ips: 10.123.64.60,10.123.64.61",
        ),
    );
    wait_ips(&cp, "annotated", &["10.123.64.60", "10.123.64.61"]);
    assert_eq!(
        external_ip_column(&cp, "annotated"),
        "10.123.64.60,10.123.64.61"
    );
    // The next dynamic one skips nothing it need not: .3.
    apply(&cp, &lb("third"));
    wait_ips(&cp, "third", &["10.123.64.3"]);

    // Asking for an address outside the pool: nothing, and a Warning.
    apply(
        &cp,
        &service(
            "outside",
            "LoadBalancer",
            "  loadBalancerIP: 192.0.2.1\n",
            "",
        ),
    );
    let event = wait_event(&cp, "outside", "AllocationFailed");
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        event["message"],
        "Failed to allocate IP for \"default/outside\": 192.0.2.1 is not in any address pool (10.123.64.0/24)"
    );
    assert!(ips(&cp, "outside").is_empty());
    assert_eq!(external_ip_column(&cp, "outside"), "<pending>");

    // Changing the request moves the Service to the new address and frees the old one.
    apply(
        &cp,
        &service(
            "asks",
            "LoadBalancer",
            "  loadBalancerIP: 10.123.64.51\n",
            "",
        ),
    );
    wait_ips(&cp, "asks", &["10.123.64.51"]);
    apply(
        &cp,
        &service(
            "outside",
            "LoadBalancer",
            "  loadBalancerIP: 10.123.64.50\n",
            "",
        ),
    );
    wait_ips(&cp, "outside", &["10.123.64.50"]);
}

#[test]
fn services_of_another_class_and_other_types_are_left_alone() {
    let cp = ControlPlane::start_with(&["--loadbalancer-pool", "10.123.64.0/24"]);
    apply(
        &cp,
        &service(
            "classy",
            "LoadBalancer",
            "  loadBalancerClass: example.com/other-lb\n",
            "",
        ),
    );
    apply(&cp, &service("internal", "ClusterIP", "", ""));
    apply(&cp, &lb("plain"));
    wait_ips(&cp, "plain", &["10.123.64.1"]);
    // The other implementation writes its own status; it stays as written.
    cp.kubectl(&[
        "patch",
        "svc",
        "classy",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.7"}]}}}"#,
    ])
    .success();
    apply(&cp, &lb("later"));
    wait_ips(&cp, "later", &["10.123.64.2"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ips(&cp, "classy"), ["198.51.100.7"]);
    assert!(events(&cp, "classy", "IPAllocated").is_empty());
    assert!(events(&cp, "classy", "AllocationFailed").is_empty());
    assert!(ips(&cp, "internal").is_empty());
    assert_eq!(external_ip_column(&cp, "internal"), "<none>");
}

#[test]
fn without_a_pool_services_stay_pending() {
    let cp = ControlPlane::start();
    apply(&cp, &lb("web"));
    // The Endpoints controller runs on the same leader: once it has made the Service's
    // Endpoints, the controllers are up, and a LoadBalancer allocator would have acted too.
    wait_for("the endpoints of web", WAIT, || {
        cp.kubectl(&["get", "endpoints", "web"]).ok().then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(ips(&cp, "web").is_empty());
    assert_eq!(external_ip_column(&cp, "web"), "<pending>");
    assert!(events(&cp, "web", "AllocationFailed").is_empty());
}

#[test]
fn two_services_asking_for_one_address_one_gets_it_then_the_other() {
    let cp = ControlPlane::start_with(&["--loadbalancer-pool", "10.123.64.0/24"]);
    let both = format!(
        "{}\n---\n{}",
        service(
            "left",
            "LoadBalancer",
            "  loadBalancerIP: 10.123.64.77\n",
            ""
        ),
        service(
            "right",
            "LoadBalancer",
            "  loadBalancerIP: 10.123.64.77\n",
            ""
        ),
    );
    apply(&cp, &both);
    let (winner, loser) = wait_for("one of them to get 10.123.64.77", WAIT, || {
        match (ips(&cp, "left").as_slice(), ips(&cp, "right").as_slice()) {
            ([ip], []) if ip == "10.123.64.77" => Some(("left", "right")),
            ([], [ip]) if ip == "10.123.64.77" => Some(("right", "left")),
            _ => None,
        }
    });
    let event = wait_event(&cp, loser, "AllocationFailed");
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        event["message"],
        format!(
            "Failed to allocate IP for \"default/{loser}\": 10.123.64.77 is already allocated to \"default/{winner}\""
        )
    );
    assert!(events(&cp, winner, "AllocationFailed").is_empty());
    // Reported once, not on every look.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(events(&cp, loser, "AllocationFailed").len(), 1);
    assert!(ips(&cp, loser).is_empty());

    cp.kubectl(&["delete", "svc", winner]).success();
    wait_ips(&cp, loser, &["10.123.64.77"]);
}

#[test]
fn a_small_pool_runs_out_and_freed_addresses_are_reused() {
    // A /30: .0 is the network and .3 the broadcast address: two to hand out.
    let cp = ControlPlane::start_with(&["--loadbalancer-pool", "10.123.64.0/30"]);
    let three = [lb("a"), lb("b"), lb("c")].join("\n---\n");
    apply(&cp, &three);
    let (holders, waiting) = wait_for("two holders and one failure", WAIT, || {
        let mut holders = Vec::new();
        let mut waiting = Vec::new();
        for name in ["a", "b", "c"] {
            match ips(&cp, name).as_slice() {
                [] => waiting.push(name),
                [ip] => holders.push((name, ip.clone())),
                more => panic!("{name} has {more:?}"),
            }
        }
        let failed = waiting
            .iter()
            .all(|w| !events(&cp, w, "AllocationFailed").is_empty());
        (holders.len() == 2 && waiting.len() == 1 && failed).then_some((holders, waiting[0]))
    });
    let mut addresses: Vec<&str> = holders.iter().map(|(_, ip)| ip.as_str()).collect();
    addresses.sort_unstable();
    assert_eq!(addresses, ["10.123.64.1", "10.123.64.2"]);
    assert_eq!(
        events(&cp, waiting, "AllocationFailed")[0]["message"],
        format!(
            "Failed to allocate IP for \"default/{waiting}\": no available IPs in the address pools (10.123.64.0/30)"
        )
    );

    // Freed by a deletion: the waiting Service gets it at once (not at the next resync).
    let (gone, freed) = &holders[0];
    cp.kubectl(&["delete", "svc", gone]).success();
    wait_for(
        &format!("{waiting} to get {freed}"),
        Duration::from_secs(10),
        || (ips(&cp, waiting) == [freed.clone()]).then_some(()),
    );

    // Freed by a change of type: the status goes, the address is reused.
    let (changed, address) = &holders[1];
    apply(&cp, &lb("d"));
    wait_event(&cp, "d", "AllocationFailed");
    apply(&cp, &service(changed, "ClusterIP", "", ""));
    wait_for(&format!("{changed} to lose its address"), WAIT, || {
        ips(&cp, changed).is_empty().then_some(())
    });
    assert_eq!(external_ip_column(&cp, changed), "<none>");
    wait_ips(&cp, "d", &[address]);
}

#[test]
fn addresses_survive_restarts_and_move_when_their_pool_goes() {
    let args = |pools: &'static str| ["--identity", "lbipam-test", "--loadbalancer-pool", pools];
    let mut cp = ControlPlane::start_with(&args("10.123.64.0/24"));
    apply(&cp, &lb("svc-x"));
    wait_ips(&cp, "svc-x", &["10.123.64.1"]);
    apply(&cp, &lb("svc-y"));
    wait_ips(&cp, "svc-y", &["10.123.64.2"]);
    apply(&cp, &lb("svc-z"));
    wait_ips(&cp, "svc-z", &["10.123.64.3"]);
    // A hole below the addresses in use.
    cp.kubectl(&["delete", "svc", "svc-x"]).success();

    cp.restart_with(&args("10.123.64.0/24"));
    // Created as soon as the new process serves: the addresses in the statuses are known
    // before anything is handed out, so these get the hole and then .4.
    apply(&cp, &[lb("a-new"), lb("b-new")].join("\n---\n"));
    wait_for("a-new and b-new to get addresses", WAIT, || {
        let (a, b) = (ips(&cp, "a-new"), ips(&cp, "b-new"));
        (!a.is_empty() && !b.is_empty()).then_some(())
    });
    let mut fresh = [ips(&cp, "a-new")[0].clone(), ips(&cp, "b-new")[0].clone()];
    fresh.sort_unstable();
    assert_eq!(fresh, ["10.123.64.1", "10.123.64.4"]);
    assert_eq!(ips(&cp, "svc-y"), ["10.123.64.2"]);
    assert_eq!(ips(&cp, "svc-z"), ["10.123.64.3"]);
    assert_eq!(events(&cp, "svc-y", "IPAllocated").len(), 1);

    // The pool shrinks to a /30 (.1 and .2) and a new one is added: the addresses outside
    // the /30 move to the new pool, the others stay.
    cp.restart_with(&args("10.123.64.0/30,10.123.65.0/24"));
    let four = if ips(&cp, "a-new") == ["10.123.64.1"] {
        "b-new"
    } else {
        "a-new"
    };
    let mut moved = wait_for("svc-z and the holder of .4 to move", WAIT, || {
        let (z, other) = (ips(&cp, "svc-z"), ips(&cp, four));
        let new_pool = |ips: &[String]| ips.len() == 1 && ips[0].starts_with("10.123.65.");
        (new_pool(&z) && new_pool(&other)).then(|| [z[0].clone(), other[0].clone()])
    });
    moved.sort_unstable();
    assert_eq!(moved, ["10.123.65.1", "10.123.65.2"]);
    assert_eq!(ips(&cp, "svc-y"), ["10.123.64.2"]);
    let one = if four == "a-new" { "b-new" } else { "a-new" };
    assert_eq!(ips(&cp, one), ["10.123.64.1"]);
    let z_events = events(&cp, "svc-z", "IPAllocated");
    assert!(
        z_events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("in place of 10.123.64.3"))),
        "{z_events:#?}"
    );
}

#[test]
fn services_with_one_sharing_key_and_no_common_port_share_an_address() {
    let cp = ControlPlane::start_with(&["--loadbalancer-pool", "10.123.64.0/24"]);
    let key = "lbipam.apiary.dev/sharing-key: web";
    apply(&cp, &service("http", "LoadBalancer", "", key));
    wait_ips(&cp, "http", &["10.123.64.1"]);
    let https = service("https", "LoadBalancer", "", key).replace("port: 80", "port: 443");
    apply(&cp, &https);
    wait_ips(&cp, "https", &["10.123.64.1"]);
    // Port 80 again: not on that address.
    apply(&cp, &service("http-too", "LoadBalancer", "", key));
    wait_ips(&cp, "http-too", &["10.123.64.2"]);
    // Without the key: not shared either.
    let plain = service("plain", "LoadBalancer", "", "").replace("port: 80", "port: 8080");
    apply(&cp, &plain);
    wait_ips(&cp, "plain", &["10.123.64.3"]);
}

#[test]
fn bad_pools_are_refused_at_start() {
    for (pool, error) in [
        ("10.123.64.1/24", "has host bits set"),
        (
            "10.0.0.0/16,10.0.3.0/24",
            "the pools 10.0.0.0/16 and 10.0.3.0/24 overlap",
        ),
        (
            "10.244.7.0/24",
            "the pool 10.244.7.0/24 overlaps the pod network (--cluster-cidr) 10.244.0.0/16",
        ),
    ] {
        let data = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"))
            .args(["--data-dir", data.path().to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--loadbalancer-pool", pool])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{pool} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(error), "{pool}: {stderr}");
    }
}
