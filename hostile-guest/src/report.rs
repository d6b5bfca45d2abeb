//! What the hostile guest tells the test, one line each on the serial
//! console: `hostile: attack DEVICE: WHAT`, `hostile: check NAME ok|FAILED`,
//! `hostile: figure NAME VALUE`, and `hostile: done attacks=N failed=M`.

use std::fs::File;
use std::io::Write;

pub struct Report {
    out: Option<File>,
    attacks: u64,
    failed: u64,
}

impl Report {
    pub fn new() -> Self {
        Self {
            out: File::options().write(true).open("/dev/ttyS0").ok(),
            attacks: 0,
            failed: 0,
        }
    }

    pub fn line(&mut self, line: &str) {
        if let Some(out) = self.out.as_mut() {
            let _ = writeln!(out, "hostile: {line}");
        }
    }

    pub fn attack(&mut self, device: &str, what: &str) {
        self.attacks += 1;
        self.line(&format!("attack {device}: {what}"));
    }

    pub fn check(&mut self, name: &str, ok: bool) {
        if !ok {
            self.failed += 1;
        }
        self.line(&format!(
            "check {name} {}",
            if ok { "ok" } else { "FAILED" }
        ));
    }

    pub fn figure(&mut self, name: &str, value: u64) {
        self.line(&format!("figure {name} {value}"));
    }

    pub fn done(&mut self) {
        let (a, f) = (self.attacks, self.failed);
        self.line(&format!("done attacks={a} failed={f}"));
    }
}
