//! The command line itself: help, version, usage errors.

use std::process::Command;

use crate::common::{bin, OutputWithin};

#[test]
fn help_lists_commands_and_exits_zero() {
    let out = Command::new(bin())
        .arg("--help")
        .output_limited()
        .expect("run imcast");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for c in [
        "validate",
        "plan",
        "preview",
        "run",
        "daemon",
        "mock-server",
    ] {
        assert!(text.contains(c), "help lacks {c}: {text}");
    }
}

#[test]
fn unknown_flag_is_invalid_input() {
    let out = Command::new(bin())
        .args(["plan", "--no-such-flag"])
        .output_limited()
        .expect("run imcast");
    assert_eq!(out.status.code(), Some(2));
}
