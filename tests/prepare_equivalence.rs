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

/// The differences, one line each, or an empty string.
fn diff(
    expected: &BTreeMap<String, Vec<String>>,
    actual: &BTreeMap<String, Vec<String>>,
) -> String {
    let mut out = String::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => out.push_str(&format!("missing   {path}  ({})\n", want.join(" "))),
            Some(got) if got != want => {
                let mut fields = Vec::new();
                for (name, (w, g)) in FIELDS.iter().zip(want.iter().zip(got)) {
                    if w != g {
                        fields.push(format!("{name} {w} != {g}"));
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
    // The image the helper VM wrote passes the filesystem checker (run by
    // this test on the host; preparation itself never parses the image).
    let images: Vec<_> = std::fs::read_dir(root.join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "erofs"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let fsck = Command::new("fsck.erofs")
        .arg(&images[0])
        .output()
        .expect("missing fsck.erofs: install erofs-utils (scripts/apt-packages)");
    assert!(fsck.status.success(), "fsck.erofs: {:?}", text(&fsck));
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
    let actual = parse(&stdout);

    let differences = diff(&expected, &actual);
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
    assert_eq!(
        diff(&expected, &actual),
        "differs   /a: mode 0644 != 0600 (expected != prepared)\n\
         missing   /b  (d 0755 0 0 - - - - - -)\n\
         unexpected /c  (l 0777 0 0 1 1 5 x - -)\n"
    );
    assert!(diff(&expected, &expected).is_empty());
    // A symlink's mode and a file's capabilities count like any field.
    let symlink = |mode: &str, xattrs: &str| {
        parse(&format!("/l\tl\t{mode}\t0\t0\t1\t1\t5\tx\t{xattrs}\t-\n"))
    };
    let cap = "security.capability=01,user.a=02";
    assert_eq!(
        diff(&symlink("0777", cap), &symlink("0755", "user.a=02")),
        "differs   /l: mode 0777 != 0755, xattrs security.capability=01,user.a=02 != user.a=02 \
         (expected != prepared)\n"
    );
    assert!(excluded("/proc/1/stat") && excluded("/etc/hosts") && !excluded("/etc/hostsx"));
}
