//! `apiary token create|list` against the real control plane, and `apiary node join` failing
//! closed when the CA hash does not match (before the token is sent anywhere).

mod support;

use support::Cluster;

#[test]
fn token_create_prints_a_join_command_list_shows_it_and_a_wrong_pin_fails_closed() {
    let cluster = Cluster::start();
    let printed = cluster.ok(&["token", "create", "--ttl", "2h", "--description", "rack 4"]);
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words[0], "echo", "{printed}");
    let token = words[1];
    assert!(
        apiary_api::bootstrap_token::parse(token).is_some(),
        "{printed}"
    );
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    assert_eq!(after("--token-file"), "-");
    let hash = after("--ca-cert-hash");
    let ca = std::fs::read(cluster.kubeconfig().parent().unwrap().join("pki/ca.crt")).unwrap();
    let (_, der) = x509_parser::pem::parse_x509_pem(&ca).unwrap();
    let cert = der.parse_x509().unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    let expected: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hash, format!("sha256:{expected}"));

    let listed = cluster.ok(&["token", "list"]);
    let header = listed.lines().next().unwrap();
    assert!(header.starts_with("TOKEN"), "{listed}");
    let row = listed.lines().find(|l| l.starts_with(token)).unwrap();
    assert!(row.contains("authentication,signing"), "{row}");
    assert!(row.contains("rack 4"), "{row}");
    assert!(row.contains("1h"), "{row}");

    // A wrong pin: refused before any credential is sent (the server sees no request with it).
    let server = after("--server");
    let wrong = format!("sha256:{}", "1".repeat(64));
    let said = cluster.fails(
        &[
            "node",
            "join",
            "--server",
            server,
            "--token-file",
            "-",
            "--ca-cert-hash",
            &wrong,
            "--data-dir",
            cluster
                .kubeconfig()
                .parent()
                .unwrap()
                .join("joiner")
                .to_str()
                .unwrap(),
        ],
        Some(token),
    );
    assert!(said.contains("refusing to join"), "{said}");
    // The token is never taken from the command line.
    let said = cluster.fails(
        &["node", "join", "--server", server, "--token", token],
        None,
    );
    assert!(said.contains("--token"), "{said}");
}
