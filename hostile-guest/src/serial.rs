//! Attacks on the serial console: a flood of fake agent status lines and
//! an overlong line (the host keeps a bounded number of either).

use std::fs::File;
use std::io::{self, Write};

use crate::report::Report;

pub fn attack(r: &mut Report) -> io::Result<()> {
    let mut tty = File::options().write(true).open("/dev/ttyS0")?;
    let mut lines = String::new();
    for i in 0..1000 {
        lines.push_str(&format!("hull-agent: error fake status {i}\n"));
    }
    tty.write_all(lines.as_bytes())?;
    r.attack("serial", "1000 fake agent status lines");
    let mut long = vec![b'x'; 8192];
    long.push(b'\n');
    tty.write_all(&long)?;
    r.attack("serial", "an 8 KiB line");
    Ok(())
}
