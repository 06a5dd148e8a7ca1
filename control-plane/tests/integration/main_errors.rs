//! How `apiary-control-plane` fails: a usage error is clap's message and usage, a fatal error
//! one line; neither prints a backtrace, even with `RUST_BACKTRACE=1`.

use std::process::{Command, Output};

fn control_plane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apiary-control-plane"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !text.to_lowercase().contains("backtrace"),
        "no backtrace: {text}"
    );
    text
}

#[test]
fn a_bad_argument_is_one_line_and_the_usage() {
    let out = control_plane(&["--listen", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("error: invalid value 'nowhere' for '--listen <LISTEN>'"),
        "{text}"
    );
    assert_clap_tail(&text);
}

/// After clap's one-line message: only its usage and its pointer to `--help`.
fn assert_clap_tail(text: &str) {
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("Usage: apiary-control-plane")
                || line == "For more information, try '--help'.",
            "{text}"
        );
    }
}

#[test]
fn an_unknown_argument_is_one_line_and_the_usage() {
    let out = control_plane(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.starts_with("error: unexpected argument '--frobnicate' found\n"),
        "{text}"
    );
    assert!(text.contains("\nUsage: apiary-control-plane "), "{text}");
    assert_clap_tail(&text);
}

#[test]
fn a_fatal_error_is_one_line_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    // A pool inside the service network: refused before anything starts.
    let data_dir = dir.path().display().to_string();
    let out = control_plane(&[
        "--data-dir",
        &data_dir,
        "--listen",
        "127.0.0.1:0",
        "--loadbalancer-pool",
        "10.96.0.0/24",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("error: --loadbalancer-pool: "), "{text}");
}

#[test]
fn an_unreadable_or_invalid_encryption_configuration_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.yaml");
    let out = control_plane(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--encryption-provider-config",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.starts_with("error: --encryption-provider-config: reading ")
            && text.contains("missing.yaml"),
        "{text}"
    );
    let kms = dir.path().join("kms.yaml");
    std::fs::write(
        &kms,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms: {name: vault, endpoint: unix:///kms.sock}\n",
    )
    .unwrap();
    let out = control_plane(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--encryption-provider-config",
        kms.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("resources[0].providers[0]: the kms provider is not supported"),
        "{text}"
    );
}
