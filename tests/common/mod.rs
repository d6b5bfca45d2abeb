//! Helpers shared by hull's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// A `hull` command with its state under `root`.
pub fn hull(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hull"));
    cmd.env("HULL_ROOT", root);
    cmd
}

/// Fails loudly (never skips) when this machine cannot run microVMs.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots microVMs and needs /dev/kvm, which this machine lacks"
    );
}

/// Output as text, for assertions with context.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failed command printed exactly one line on stderr containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "expected failure; stdout: {stdout}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one error line, got: {stderr:?}"
    );
    assert!(stderr.starts_with("hull: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
}
