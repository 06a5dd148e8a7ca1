//! `apiary-lab`'s command line (no privileges needed): clap's help and usage errors, never a
//! backtrace, even with `RUST_BACKTRACE=1`.

use std::process::{Command, Output};

fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apiary-lab"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

#[test]
fn help_names_every_command() {
    let out = lab(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["demo", "bench-pods", "bench-services", "bench-policy"] {
        assert!(text.contains(command), "{text}");
    }
}

#[test]
fn a_bad_argument_is_one_line_and_the_usage() {
    for (args, first) in [
        (
            &["frobnicate"][..],
            "error: unrecognized subcommand 'frobnicate'",
        ),
        (
            &["--bogus"][..],
            "error: unexpected argument '--bogus' found",
        ),
        (
            &["bench-pods", "--pods", "0"][..],
            "error: invalid value '0' for '--pods <PODS>': must be at least 1",
        ),
        (
            &["bench-pods", "--seconds"][..],
            "error: a value is required for '--seconds <SECONDS>' but none was supplied",
        ),
    ] {
        let out = lab(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.to_lowercase().contains("backtrace"),
            "no backtrace: {text}"
        );
        assert_eq!(text.lines().next(), Some(first), "{text}");
        // Then only clap's usage and its pointer to `--help`.
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            assert!(
                line.starts_with("Usage: apiary-lab")
                    || line.starts_with("  tip: ")
                    || line == "For more information, try '--help'.",
                "{text}"
            );
        }
    }
}
