//! Secrets at rest, on the embedded store: with `--encryption-provider-config` the redb file
//! holds only ciphertext of a Secret (under Kubernetes' `k8s:enc:<provider>:v1:<key>:` prefix);
//! `apiary secrets rotate` moves every Secret to the new first key; a store read with the wrong
//! key is a clear error that loses nothing.

mod support;

use base64::Engine as _;
use support::Cluster;

const PASSWORD: &str = "correct-horse-battery-staple";
const IN_THE_CLEAR: &str = "configmaps-stay-in-the-clear";

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Writes an `EncryptionConfiguration` for Secrets with `providers` (YAML list items).
fn config(dir: &std::path::Path, name: &str, providers: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn store_bytes(cluster: &Cluster) -> Vec<u8> {
    std::fs::read(cluster.data_dir().join("store.redb")).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn password_of(cluster: &Cluster) -> String {
    let secret = cluster.json(&["get", "secret", "db", "-o", "json"]);
    let encoded = secret["data"]["password"].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn secrets_are_ciphertext_in_the_store_rotate_to_the_new_key_and_survive_a_wrong_key() {
    let configs = tempfile::tempdir().unwrap();
    let aescbc_key1 = config(
        configs.path(),
        "key1.yaml",
        &format!(
            "  - aescbc:\n      keys: [{{name: key1, secret: {}}}]\n  - identity: {{}}\n",
            key(1)
        ),
    );
    let mut cluster = Cluster::start_with(&["--encryption-provider-config", &aescbc_key1]);
    let manifest = cluster.manifest(
        "objects.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {PASSWORD}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: plain}}\ndata: {{note: {IN_THE_CLEAR}}}\n"
        ),
    );
    cluster.ok(&["apply", "-f", &manifest]);
    assert_eq!(password_of(&cluster), PASSWORD);

    let stored = store_bytes(&cluster);
    // The ConfigMap shows that the file is searched where values are.
    assert!(contains(&stored, IN_THE_CLEAR));
    assert!(contains(&stored, "k8s:enc:aescbc:v1:key1:"));
    let encoded = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    assert!(!contains(&stored, PASSWORD), "the password is in the clear");
    assert!(!contains(&stored, &encoded), "the password is in the clear");

    // A new first key (another provider), the old one still reads; rotate.
    let rotation = config(
        configs.path(),
        "rotation.yaml",
        &format!(
            "  - secretbox:\n      keys: [{{name: key2, secret: {}}}]\n  - aescbc:\n      keys: [{{name: key1, secret: {}}}]\n",
            key(2),
            key(1)
        ),
    );
    cluster.restart_with(&["--encryption-provider-config", &rotation]);
    let out = cluster.ok(&["secrets", "rotate"]);
    assert!(
        out.contains("secret/db replaced (namespace default)"),
        "{out}"
    );
    assert!(
        out.contains("secrets rewritten under the encryption configuration's first key"),
        "{out}"
    );

    // Only the new key from now on: every Secret still reads.
    let key2_only = config(
        configs.path(),
        "key2.yaml",
        &format!(
            "  - secretbox:\n      keys: [{{name: key2, secret: {}}}]\n",
            key(2)
        ),
    );
    cluster.restart_with(&["--encryption-provider-config", &key2_only]);
    assert_eq!(password_of(&cluster), PASSWORD);
    let stored = store_bytes(&cluster);
    assert!(contains(&stored, "k8s:enc:secretbox:v1:key2:"));
    assert!(!contains(&stored, PASSWORD) && !contains(&stored, &encoded));

    // The wrong key: a clear error naming the key the Secret needs; the server still serves.
    cluster.restart_with(&["--encryption-provider-config", &aescbc_key1]);
    let err = cluster.fails(&["get", "secret", "db", "-o", "json"], None);
    assert!(
        err.contains("unable to transform key \"/registry/core/secrets/default/db\"")
            && err.contains("k8s:enc:secretbox:v1:key2:"),
        "{err}"
    );
    cluster.ok(&["get", "configmap", "plain"]);

    // Nothing was lost: with the right key it reads again.
    cluster.restart_with(&["--encryption-provider-config", &key2_only]);
    assert_eq!(password_of(&cluster), PASSWORD);
}
