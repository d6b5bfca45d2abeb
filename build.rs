//! Generates the x86_64 syscall name table (`syscall_names.rs` in OUT_DIR)
//! from the kernel headers of the build machine (linux-libc-dev, a
//! dependency of build-essential): `hull ps`/`inspect` name the call a
//! VMM's seccomp filter stopped. Without the header the table is empty and
//! calls are shown by number.

use std::fmt::Write;

const HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";

fn main() {
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(HEADER).unwrap_or_else(|_| {
        println!("cargo:warning={HEADER} is missing: syscalls will be shown by number");
        String::new()
    });
    let mut out = String::from(
        "/// x86_64 syscall numbers and names.\npub const SYSCALL_NAMES: &[(i64, &str)] = &[\n",
    );
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (words.next(), words.next(), words.next())
        {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<i64>()) {
                let _ = writeln!(out, "    ({nr}, {name:?}),");
            }
        }
    }
    out.push_str("];\n");
    let path = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("syscall_names.rs");
    std::fs::write(path, out).expect("OUT_DIR is writable");
}
