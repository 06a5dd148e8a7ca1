use serde_json::{Value, json};

use super::*;

fn service(ns: &str, name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .unwrap()
}

fn slice(ns: &str, name: &str, service: &str, endpoints: Value, ports: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
    .unwrap()
}

fn pod(ns: &str, name: &str, ip: &str, phase: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"containers": []},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

/// A ClusterIP service with two named ports, a dual-stack one, a headless one of two slices
/// (one endpoint not ready), an ExternalName one and two pods, one finished.
fn cluster() -> ClusterRecords {
    let mut records = ClusterRecords::default();
    records.apply_service(&service(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]}),
    ));
    records.apply_service(&service(
        "kube-system",
        "dns",
        json!({"clusterIP": "10.96.0.2", "clusterIPs": ["10.96.0.2", "fd00::2"],
               "ports": [{"port": 53}]}),
    ));
    records.apply_service(&service(
        "default",
        "db",
        json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
    ));
    let pg = json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]);
    records.apply_endpoint_slice(&slice(
        "default",
        "db-abc",
        "db",
        json!([
            {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.6"], "hostname": "db-1", "conditions": {}},
            {"addresses": ["10.244.1.7"], "hostname": "db-2", "conditions": {"ready": false}},
        ]),
        pg.clone(),
    ));
    records.apply_endpoint_slice(&slice(
        "default",
        "db-def",
        "db",
        json!([{"addresses": ["10.244.2.8"], "conditions": {"ready": true}}]),
        pg,
    ));
    records.apply_service(&service(
        "default",
        "ext",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    ));
    records.apply_pod(&pod("default", "client", "10.244.1.20", "Running"));
    records.apply_pod(&pod("default", "job", "10.244.1.21", "Succeeded"));
    records
}

fn ask(records: &ClusterRecords, name: &str, rtype: RecordType) -> Answer {
    records.resolve(&Name::from_ascii(name).unwrap(), rtype)
}

/// The answers' data as text (`10.96.0.10`, `0 100 80 web.default.svc.cluster.local.`), sorted.
fn data(answer: &Answer) -> Vec<String> {
    match answer {
        Answer::Records { answers, .. } => {
            let mut data: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
            data.sort();
            data
        }
        other => panic!("expected records, got {other:?}"),
    }
}

fn additionals(answer: &Answer) -> Vec<String> {
    match answer {
        Answer::Records { additionals, .. } => {
            let mut data: Vec<String> = additionals
                .iter()
                .map(|r| format!("{} {}", r.name, r.data))
                .collect();
            data.sort();
            data
        }
        other => panic!("expected records, got {other:?}"),
    }
}

#[test]
fn service_a_is_its_cluster_ip_with_ttl_and_owner() {
    let records = cluster();
    let answer = ask(&records, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&answer), ["10.96.0.10"]);
    let Answer::Records { answers, .. } = answer else {
        unreachable!()
    };
    assert_eq!(answers[0].ttl, TTL);
    assert_eq!(
        answers[0].name.to_string(),
        "web.default.svc.cluster.local."
    );
    // A relative question (what the server never gets, but the API allows) is answered the same.
    assert_eq!(
        data(&ask(
            &records,
            "web.default.svc.cluster.local",
            RecordType::A
        )),
        ["10.96.0.10"]
    );
}

#[test]
fn dual_stack_service_answers_a_and_aaaa_separately() {
    let records = cluster();
    let name = "dns.kube-system.svc.cluster.local.";
    assert_eq!(data(&ask(&records, name, RecordType::A)), ["10.96.0.2"]);
    assert_eq!(data(&ask(&records, name, RecordType::AAAA)), ["fd00::2"]);
    assert_eq!(
        data(&ask(&records, name, RecordType::ANY)).len(),
        3,
        "A, AAAA and the SRV"
    );
}

#[test]
fn headless_service_a_lists_its_ready_endpoints_of_all_slices() {
    let records = cluster();
    assert_eq!(
        data(&ask(
            &records,
            "db.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.5", "10.244.1.6", "10.244.2.8"],
        "10.244.1.7 is not ready; an unset ready condition counts as ready"
    );
}

#[test]
fn endpoints_are_named_by_hostname_else_by_dashed_address() {
    let records = cluster();
    let a = |name: &str| ask(&records, name, RecordType::A);
    assert_eq!(
        data(&a("db-0.db.default.svc.cluster.local.")),
        ["10.244.1.5"]
    );
    assert_eq!(
        data(&a("db-1.db.default.svc.cluster.local.")),
        ["10.244.1.6"]
    );
    assert_eq!(
        data(&a("10-244-2-8.db.default.svc.cluster.local.")),
        ["10.244.2.8"]
    );
    assert_eq!(
        a("db-2.db.default.svc.cluster.local."),
        Answer::NxDomain,
        "not ready"
    );
    assert_eq!(
        a("10-244-1-5.db.default.svc.cluster.local."),
        Answer::NxDomain,
        "an endpoint with a hostname is named by it only"
    );
    assert_eq!(a("db-9.db.default.svc.cluster.local."), Answer::NxDomain);
    assert_eq!(
        ask(
            &records,
            "db-0.db.default.svc.cluster.local.",
            RecordType::AAAA
        ),
        Answer::NoData
    );
}

#[test]
fn srv_of_a_normal_service_targets_the_service_name() {
    let records = cluster();
    let http = ask(
        &records,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(data(&http), ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(
        additionals(&http),
        ["web.default.svc.cluster.local. 10.96.0.10"]
    );
    assert_eq!(
        data(&ask(
            &records,
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        )),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    assert_eq!(
        ask(
            &records,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        Answer::NxDomain,
        "the http port is TCP"
    );
    assert_eq!(
        ask(
            &records,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::A
        ),
        Answer::NoData
    );
    // An SRV question for the service itself lists every port.
    assert_eq!(
        data(&ask(
            &records,
            "web.default.svc.cluster.local.",
            RecordType::SRV
        )),
        [
            "0 50 53 web.default.svc.cluster.local.",
            "0 50 80 web.default.svc.cluster.local."
        ]
    );
}

#[test]
fn srv_of_a_headless_service_has_one_record_per_ready_endpoint() {
    let records = cluster();
    let pg = ask(
        &records,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&pg),
        [
            "0 33 5432 10-244-2-8.db.default.svc.cluster.local.",
            "0 33 5432 db-0.db.default.svc.cluster.local.",
            "0 33 5432 db-1.db.default.svc.cluster.local.",
        ]
    );
    assert_eq!(
        additionals(&pg),
        [
            "10-244-2-8.db.default.svc.cluster.local. 10.244.2.8",
            "db-0.db.default.svc.cluster.local. 10.244.1.5",
            "db-1.db.default.svc.cluster.local. 10.244.1.6",
        ]
    );
}

#[test]
fn external_name_service_is_a_cname_for_every_type() {
    let records = cluster();
    for rtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::CNAME,
    ] {
        assert_eq!(
            data(&ask(&records, "ext.default.svc.cluster.local.", rtype)),
            ["example.com."],
            "{rtype}"
        );
    }
    let Answer::Records { answers, .. } =
        ask(&records, "ext.default.svc.cluster.local.", RecordType::A)
    else {
        unreachable!()
    };
    assert_eq!(answers[0].record_type(), RecordType::CNAME);
}

#[test]
fn ptr_names_services_then_endpoints_with_hostnames_then_pods() {
    let mut records = cluster();
    let ptr = |records: &ClusterRecords, name: &str| ask(records, name, RecordType::PTR);
    assert_eq!(
        data(&ptr(&records, "10.0.96.10.in-addr.arpa.")),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        data(&ptr(&records, "5.1.244.10.in-addr.arpa.")),
        ["db-0.db.default.svc.cluster.local."]
    );
    assert_eq!(
        data(&ptr(&records, "20.1.244.10.in-addr.arpa.")),
        ["10-244-1-20.default.pod.cluster.local."]
    );
    let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(
        data(&ptr(&records, v6)),
        ["dns.kube-system.svc.cluster.local."]
    );
    // Addresses nobody in the cluster has are someone else's.
    assert_eq!(ptr(&records, "4.3.2.1.in-addr.arpa."), Answer::NotCluster);
    assert_eq!(
        ptr(&records, "8.2.244.10.in-addr.arpa."),
        Answer::NotCluster,
        "no hostname, no pod"
    );
    assert_eq!(
        ptr(&records, "7.1.244.10.in-addr.arpa."),
        Answer::NotCluster,
        "not ready"
    );
    assert_eq!(
        ptr(&records, "10.0.96.010.in-addr.arpa."),
        Answer::NotCluster,
        "not canonical"
    );
    assert_eq!(
        ptr(&records, "96.10.in-addr.arpa."),
        Answer::NotCluster,
        "not an address"
    );
    // A known address asked for another type.
    assert_eq!(
        ask(&records, "10.0.96.10.in-addr.arpa.", RecordType::A),
        Answer::NoData
    );
    // A StatefulSet pod is called by its stable name, not its pod name.
    records.apply_pod(&pod("default", "db-0", "10.244.1.5", "Running"));
    assert_eq!(
        data(&ptr(&records, "5.1.244.10.in-addr.arpa.")),
        ["db-0.db.default.svc.cluster.local."]
    );
}

#[test]
fn pod_names_need_a_pod_with_that_address_in_that_namespace() {
    let records = cluster();
    let a = |name: &str| ask(&records, name, RecordType::A);
    assert_eq!(
        data(&a("10-244-1-20.default.pod.cluster.local.")),
        ["10.244.1.20"]
    );
    assert_eq!(a("10-244-1-20.other.pod.cluster.local."), Answer::NxDomain);
    assert_eq!(
        a("10-244-1-99.default.pod.cluster.local."),
        Answer::NxDomain
    );
    assert_eq!(
        a("10-244-1-21.default.pod.cluster.local."),
        Answer::NxDomain,
        "finished pod"
    );
    assert_eq!(a("not-an-ip.default.pod.cluster.local."), Answer::NxDomain);
    assert_eq!(a("default.pod.cluster.local."), Answer::NoData);
}

#[test]
fn missing_names_are_nxdomain_and_other_types_nodata() {
    let records = cluster();
    let ask = |name: &str, rtype| ask(&records, name, rtype);
    assert_eq!(
        ask("web.default.svc.cluster.local.", RecordType::AAAA),
        Answer::NoData
    );
    assert_eq!(
        ask("web.default.svc.cluster.local.", RecordType::TXT),
        Answer::NoData
    );
    assert_eq!(
        ask("nope.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask("web.other.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask("x.y.web.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(ask("foo.cluster.local.", RecordType::A), Answer::NxDomain);
    // Names with something below them exist.
    assert_eq!(
        ask("default.svc.cluster.local.", RecordType::A),
        Answer::NoData
    );
    assert_eq!(ask("svc.cluster.local.", RecordType::A), Answer::NoData);
    assert_eq!(
        ask("_tcp.web.default.svc.cluster.local.", RecordType::A),
        Answer::NoData
    );
    assert_eq!(
        ask("_sctp.web.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask("empty.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(ask("cluster.local.", RecordType::A), Answer::NoData);
    let soa = ask("cluster.local.", RecordType::SOA);
    assert_eq!(
        data(&soa)[0].split(' ').take(2).collect::<Vec<_>>(),
        ["ns.dns.cluster.local.", "hostmaster.cluster.local."]
    );
    // Outside the cluster domain: forwarded.
    assert_eq!(ask("example.com.", RecordType::A), Answer::NotCluster);
    assert_eq!(ask("local.", RecordType::A), Answer::NotCluster);
    assert_eq!(
        ask("cluster.local.example.com.", RecordType::A),
        Answer::NotCluster
    );
}

#[test]
fn headless_service_without_ready_endpoints_has_no_name() {
    let mut records = cluster();
    records.apply_service(&service("default", "lonely", json!({"clusterIP": "None"})));
    assert_eq!(
        ask(&records, "lonely.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
}

#[test]
fn publish_not_ready_addresses_includes_not_ready_endpoints() {
    let mut records = cluster();
    records.apply_service(&service(
        "default",
        "db",
        json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
    ));
    assert_eq!(
        data(&ask(
            &records,
            "db-2.db.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.7"]
    );
}

#[test]
fn names_are_case_insensitive() {
    let records = cluster();
    assert_eq!(
        data(&ask(
            &records,
            "WEB.Default.SVC.Cluster.Local.",
            RecordType::A
        )),
        ["10.96.0.10"]
    );
    assert_eq!(
        data(&ask(
            &records,
            "DB-0.db.DEFAULT.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.5"]
    );
    assert_eq!(
        data(&ask(
            &records,
            "_HTTP._TCP.web.default.svc.cluster.local.",
            RecordType::SRV
        ))
        .len(),
        1
    );
    assert_eq!(
        data(&ask(
            &records,
            "10-244-1-20.Default.POD.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.20"]
    );
    let mut upper = ClusterRecords::new("Example.ORG.");
    upper.apply_service(&service("Team", "API", json!({"clusterIP": "10.96.0.7"})));
    assert_eq!(
        data(&ask(&upper, "api.team.svc.example.org.", RecordType::A)),
        ["10.96.0.7"]
    );
    assert_eq!(
        ask(&upper, "api.team.svc.cluster.local.", RecordType::A),
        Answer::NotCluster
    );
    assert_eq!(upper.domain(), "example.org");
}

#[test]
fn deleting_objects_removes_their_records() {
    let mut records = cluster();
    let serial = records.soa().data.to_string();
    records.delete_service("default", "web");
    assert_ne!(
        records.soa().data.to_string(),
        serial,
        "the SOA serial moves"
    );
    assert_eq!(
        ask(&records, "web.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&records, "10.0.96.10.in-addr.arpa.", RecordType::PTR),
        Answer::NotCluster
    );

    records.delete_endpoint_slice("default", "db-abc");
    assert_eq!(
        data(&ask(
            &records,
            "db.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.2.8"]
    );
    assert_eq!(
        ask(
            &records,
            "db-0.db.default.svc.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
    records.delete_endpoint_slice("default", "db-def");
    assert_eq!(
        ask(&records, "db.default.svc.cluster.local.", RecordType::A),
        Answer::NxDomain
    );

    records.delete_pod("default", "client");
    assert_eq!(
        ask(
            &records,
            "10-244-1-20.default.pod.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&records, "20.1.244.10.in-addr.arpa.", RecordType::PTR),
        Answer::NotCluster
    );

    records.delete_service("default", "db");
    records.delete_service("default", "ext");
    records.delete_service("kube-system", "dns");
    assert_eq!(
        ask(&records, "svc.cluster.local.", RecordType::A),
        Answer::NxDomain,
        "now empty"
    );
}

#[test]
fn a_slice_relabelled_to_another_service_leaves_the_first() {
    let mut records = cluster();
    records.apply_service(&service("default", "db2", json!({"clusterIP": "None"})));
    records.apply_endpoint_slice(&slice(
        "default",
        "db-def",
        "db2",
        json!([{"addresses": ["10.244.2.8"]}]),
        json!([]),
    ));
    assert_eq!(
        data(&ask(
            &records,
            "db.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.5", "10.244.1.6"]
    );
    assert_eq!(
        data(&ask(
            &records,
            "db2.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.2.8"]
    );
}

#[test]
fn applying_again_replaces_the_object() {
    let mut records = cluster();
    records.apply_service(&service(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.11"}),
    ));
    assert_eq!(
        data(&ask(
            &records,
            "web.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.96.0.11"]
    );
    assert_eq!(
        ask(
            &records,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        Answer::NxDomain,
        "the ports went with the old spec"
    );
    records.apply_pod(&pod("default", "client", "10.244.1.30", "Running"));
    assert_eq!(
        ask(
            &records,
            "10-244-1-20.default.pod.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
    // A pod that finishes gives its address back.
    records.apply_pod(&pod("default", "client", "10.244.1.30", "Failed"));
    assert_eq!(
        ask(
            &records,
            "10-244-1-30.default.pod.cluster.local.",
            RecordType::A
        ),
        Answer::NxDomain
    );
}

#[test]
fn an_external_name_inside_the_cluster_domain_comes_with_its_target_s_records() {
    let mut records = cluster();
    records.apply_service(&service(
        "default",
        "alias",
        json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}),
    ));
    // Two aliases pointing at each other: the chain is cut, not followed forever.
    records.apply_service(&service(
        "default",
        "loop-a",
        json!({"type": "ExternalName", "externalName": "loop-b.default.svc.cluster.local"}),
    ));
    records.apply_service(&service(
        "default",
        "loop-b",
        json!({"type": "ExternalName", "externalName": "loop-a.default.svc.cluster.local"}),
    ));
    assert_eq!(
        data(&ask(
            &records,
            "alias.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.96.0.10", "web.default.svc.cluster.local."]
    );
    // Asked for the CNAME itself: just the CNAME.
    assert_eq!(
        data(&ask(
            &records,
            "alias.default.svc.cluster.local.",
            RecordType::CNAME
        )),
        ["web.default.svc.cluster.local."]
    );
    let looped = data(&ask(
        &records,
        "loop-a.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert!(looped.len() <= 9, "{looped:?}");
}

/// The agent sends the records to the DNS process as JSON: the copy must answer every question
/// as the original does, and go on changing as it would.
#[test]
fn a_serialized_copy_answers_and_changes_as_the_original() {
    let original = cluster();
    let json = serde_json::to_vec(&original).unwrap();
    let mut copy: ClusterRecords = serde_json::from_slice(&json).unwrap();
    let questions = [
        ("web.default.svc.cluster.local.", RecordType::A),
        ("dns.kube-system.svc.cluster.local.", RecordType::AAAA),
        ("db.default.svc.cluster.local.", RecordType::A),
        ("db-0.db.default.svc.cluster.local.", RecordType::A),
        ("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV),
        ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ("ext.default.svc.cluster.local.", RecordType::A),
        ("10-244-1-20.default.pod.cluster.local.", RecordType::A),
        ("10-244-1-21.default.pod.cluster.local.", RecordType::A),
        ("5.1.244.10.in-addr.arpa.", RecordType::PTR),
        ("cluster.local.", RecordType::SOA),
        ("nothing.default.svc.cluster.local.", RecordType::A),
        ("example.com.", RecordType::A),
    ];
    for (name, rtype) in questions {
        assert_eq!(
            ask(&copy, name, rtype),
            ask(&original, name, rtype),
            "{name} {rtype}"
        );
    }
    assert_eq!(copy.serial(), original.serial());
    assert_eq!(copy.domain(), original.domain());
    // The slice index came along: a slice is still found by its name.
    copy.delete_endpoint_slice("default", "db-abc");
    assert_eq!(
        data(&ask(&copy, "db.default.svc.cluster.local.", RecordType::A)),
        ["10.244.2.8"]
    );
    assert_ne!(copy.serial(), original.serial());
}
