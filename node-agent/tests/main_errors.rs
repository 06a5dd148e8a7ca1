//! How `apiary-node-agent` fails: a usage error is clap's message and usage, a fatal error one
//! line (under `apiary up`, the last line of its log); neither prints a backtrace, even with
//! `RUST_BACKTRACE=1`.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apiary-node-agent"))
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
    let out = agent(&["run", "--heartbeat-seconds", "often"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("error: invalid value 'often' for '--heartbeat-seconds"),
        "{text}"
    );
    assert_clap_tail(&text);
    let out = agent(&["run", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.starts_with("error: unexpected argument '--frobnicate' found\n"),
        "{text}"
    );
    assert!(text.contains("\nUsage: apiary-node-agent run "), "{text}");
    assert_clap_tail(&text);
}

/// After clap's one-line message: only its tip, its usage and its pointer to `--help`.
fn assert_clap_tail(text: &str) {
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("Usage: apiary-node-agent")
                || line.starts_with("  tip: ")
                || line == "For more information, try '--help'.",
            "{text}"
        );
    }
}

#[test]
fn a_fatal_error_is_one_line_without_a_backtrace() {
    let out = agent(&["run", "--kubeconfig", "/nonexistent/node.kubeconfig"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("error: "), "{text}");
    assert!(text.contains("/nonexistent/node.kubeconfig"), "{text}");
}
