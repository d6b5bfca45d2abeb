//! Image preparation makes exactly the tree the layers describe: a
//! two-layer image full of edge cases (tests/support/make-equivalence-image:
//! sizes, symlinks, hard links, special modes, owners, xattrs incl.
//! security.capability, a fifo, deep and long names, 300 entries in one
//! directory, whiteouts, an opaque directory, replacements) is loaded,
//! prepared by hull and listed from inside a container; the listing must
//! equal the tree the script computed by applying the layers on the host
//! (OCI semantics, in Python). Whatever path prepares the root filesystem
//! (the guest unpacking into ext4 today), this test does not change.
//!
//! The listing comes from a static helper in the image
//! (tests/support/equivalence-image/tree-lister.c: busybox cannot read
//! xattrs, and without busybox the image is 1.5 MB instead of 3.6: guest
//! I/O makes every MB count), compared field by field: type, mode, owner,
//! size, link count, mtime, symlink target, xattrs and content hash
//! (directory sizes, link counts and mtimes depend on the filesystem, not
//! the image, and are not compared).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{hull, require_kvm, text};

/// The fields of a listing line after the path (see the script).
const FIELDS: [&str; 10] = [
    "type", "mode", "uid", "gid", "size", "nlink", "mtime", "target", "xattrs", "sha256",
];

/// What the container's root has that the image does not: hull's mounts
/// (/proc, /sys, /dev and what is below) and the files it writes into
/// every container. The image has the mount points, but the container
/// shows the mounted filesystems there.
const NOT_THE_IMAGE: [&str; 6] = [
    "/proc",
    "/sys",
    "/dev",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
];

fn excluded(path: &str) -> bool {
    NOT_THE_IMAGE
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// `path -> fields` of a listing in the script's format.
fn parse(listing: &str) -> BTreeMap<String, Vec<String>> {
    listing
        .lines()
        .map(|line| {
            let mut fields = line.split('\t').map(str::to_string);
            let path = fields.next().unwrap();
            let rest: Vec<String> = fields.collect();
            assert_eq!(rest.len(), FIELDS.len(), "bad listing line {line:?}");
            (path, rest)
        })
        .filter(|(path, _)| !excluded(path))
        .collect()
}

/// Differences today's preparation is known to make, tolerated as exactly
/// that difference (a path that prepares the exact tree passes too), with
/// why. `fields` is the expected line, `field` the differing one.
fn known_difference(fields: &[String], field: &str, want: &str, got: &str) -> Option<&'static str> {
    match (fields[0].as_str(), field) {
        // Linux ignores a symlink's mode; the guest's ext4 symlinks come out
        // 0755 (the unpacker never chmods a symlink; the guest kernel's
        // umask reaches them).
        ("l", "mode") if want == "0777" && got == "0755" => Some("symlink mode 0755, not 0777"),
        // The guest kernel has no CONFIG_EXT4_FS_SECURITY, so the
        // unpacker's security.* xattrs fail with EOPNOTSUPP, which it
        // ignores: file capabilities are lost.
        (_, "xattrs") => {
            let kept: Vec<&str> = want
                .split(',')
                .filter(|x| !x.starts_with("security."))
                .collect();
            let kept = if kept.is_empty() {
                "-".to_string()
            } else {
                kept.join(",")
            };
            (kept == got).then_some("security.* xattrs dropped")
        }
        _ => None,
    }
}

/// The differences, one line each, or an empty string; known differences
/// (see [`known_difference`]) are counted in `known` instead.
fn diff(
    expected: &BTreeMap<String, Vec<String>>,
    actual: &BTreeMap<String, Vec<String>>,
    known: &mut BTreeMap<&'static str, usize>,
) -> String {
    let mut out = String::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => out.push_str(&format!("missing   {path}  ({})\n", want.join(" "))),
            Some(got) if got != want => {
                let mut fields = Vec::new();
                for (name, (w, g)) in FIELDS.iter().zip(want.iter().zip(got)) {
                    if w == g {
                        continue;
                    }
                    match known_difference(want, name, w, g) {
                        Some(why) => *known.entry(why).or_default() += 1,
                        None => fields.push(format!("{name} {w} != {g}")),
                    }
                }
                if !fields.is_empty() {
                    out.push_str(&format!(
                        "differs   {path}: {} (expected != prepared)\n",
                        fields.join(", ")
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            out.push_str(&format!("unexpected {path}  ({})\n", got.join(" ")));
        }
    }
    out
}

#[test]
fn prepared_root_filesystem_equals_the_layers_applied_on_the_host() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make-equivalence-image");
    let out = Command::new(&script)
        .arg(work)
        .output()
        .expect("cannot run tests/support/make-equivalence-image (needs python3)");
    assert!(
        out.status.success(),
        "make-equivalence-image: {:?}",
        text(&out)
    );
    let expected = parse(&std::fs::read_to_string(work.join("expected.txt")).unwrap());

    let root = work.join("root");
    let out = hull(&root)
        .args(["load", "-i"])
        .arg(work.join("image.tar"))
        .output()
        .unwrap();
    assert!(out.status.success(), "hull load: {:?}", text(&out));

    // The first run prepares the root filesystem (in a fresh hull root, so
    // it is this build's preparation that is listed).
    let t0 = Instant::now();
    let out = hull(&root)
        .args(["run", "--rm", "--network", "none", "equivalence:test"])
        .args(["/t/tree-lister", "/"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "hull run: {:?}\nstderr: {stderr}",
        out.status
    );
    eprintln!(
        "prepared and listed {} paths in {:.1?}",
        expected.len(),
        t0.elapsed()
    );
    // What the preparation measured (the cache's PrepareStats), for whoever
    // reads the log: this image is also a small benchmark.
    for entry in std::fs::read_dir(root.join("rootfs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|x| x == "json") {
            let stats = std::fs::read_to_string(entry.path()).unwrap();
            eprintln!(
                "preparation: {}",
                stats.split_whitespace().collect::<String>()
            );
        }
    }
    let mut actual = parse(&stdout);
    // ext4's lost+found is the filesystem's, not the image's.
    if !expected.contains_key("/lost+found") {
        actual.retain(|p, _| p != "/lost+found" && !p.starts_with("/lost+found/"));
    }

    let mut known = BTreeMap::new();
    let differences = diff(&expected, &actual, &mut known);
    for (why, n) in &known {
        eprintln!("known difference of today's preparation, {n} paths: {why}");
    }
    assert!(
        differences.is_empty(),
        "the prepared root filesystem differs from the layers applied on the host \
         ({} paths expected, {} found):\n{differences}",
        expected.len(),
        actual.len()
    );
}

#[test]
fn the_diff_names_each_difference() {
    let expected =
        parse("/a\tf\t0644\t0\t0\t1\t1\t5\t-\t-\tab\n/b\td\t0755\t0\t0\t-\t-\t-\t-\t-\t-\n");
    let actual =
        parse("/a\tf\t0600\t0\t0\t1\t1\t5\t-\t-\tab\n/c\tl\t0777\t0\t0\t1\t1\t5\tx\t-\t-\n");
    let mut known = BTreeMap::new();
    assert_eq!(
        diff(&expected, &actual, &mut known),
        "differs   /a: mode 0644 != 0600 (expected != prepared)\n\
         missing   /b  (d 0755 0 0 - - - - - -)\n\
         unexpected /c  (l 0777 0 0 1 1 5 x - -)\n"
    );
    assert!(diff(&expected, &expected, &mut known).is_empty());
    assert!(known.is_empty());

    // Known differences pass as exactly that difference only.
    let symlink = |mode: &str, xattrs: &str| {
        parse(&format!("/l\tl\t{mode}\t0\t0\t1\t1\t5\tx\t{xattrs}\t-\n"))
    };
    let cap = "security.capability=01,user.a=02";
    let got = diff(
        &symlink("0777", cap),
        &symlink("0755", "user.a=02"),
        &mut known,
    );
    assert!(got.is_empty(), "{got}");
    assert_eq!(known.len(), 2);
    let got = diff(&symlink("0777", cap), &symlink("0700", "-"), &mut known);
    assert_eq!(
        got,
        "differs   /l: mode 0777 != 0700, xattrs security.capability=01,user.a=02 != - \
         (expected != prepared)\n"
    );
    assert!(excluded("/proc/1/stat") && excluded("/etc/hosts") && !excluded("/etc/hostsx"));
}
