//! Unit tests on hand-made upper directories (as root: whiteouts are
//! 0:0 character devices, overlay's xattrs are `trusted.*`).

use super::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::process::Command;

/// Fails (never skips) when not root: the tests need mknod and trusted.*.
pub(super) fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "layer_out tests need root (mknod 0:0, trusted.* xattrs, mount)"
    );
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub(super) fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: NUL-terminated strings; pointer and length describe `value`.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
}

pub(super) fn mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    let cp = cpath(p);
    // SAFETY: NUL-terminated path; mknod has no memory preconditions.
    let r = unsafe { libc::mknod(cp.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
}

/// Sets mtime (seconds, nanoseconds) without following a symlink.
fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let cp = cpath(p);
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: NUL-terminated path, `times` is two valid timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cp.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn layer(upper: &Path, opts: &LayerOptions) -> (Vec<u8>, LayerStats) {
    let mut tar = Vec::new();
    let stats = write_layer(upper, &mut tar, opts).unwrap();
    assert_eq!(stats.tar_bytes, tar.len() as u64);
    assert_eq!(tar.len() % BLOCK, 0);
    assert!(
        tar[tar.len() - 2 * BLOCK..].iter().all(|&b| b == 0),
        "end-of-archive"
    );
    (tar, stats)
}

/// (path, type flag, size, link name) of every entry, read with the
/// `tar` crate (PAX applied), and the PAX records of each.
fn list(tar: &[u8]) -> Vec<(String, u8, u64, String)> {
    let mut a = ::tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            (path, e.header().entry_type().as_byte(), e.size(), link)
        })
        .collect()
}

fn names(tar: &[u8]) -> Vec<String> {
    list(tar).into_iter().map(|(p, ..)| p).collect()
}

/// The raw PAX records (the `x` header's data) before the entry `path`.
fn pax_of(tar: &[u8], path: &str) -> Vec<u8> {
    let mut a = ::tar::Archive::new(tar);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path_bytes().as_ref() == path.as_bytes() {
            let Some(exts) = e.pax_extensions().unwrap() else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for x in exts {
                let x = x.unwrap();
                let rec = [x.key_bytes(), b"=", x.value_bytes()].concat();
                let rest = rec.len() + 2;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                out.extend_from_slice(format!("{len} ").as_bytes());
                out.extend_from_slice(&rec);
                out.push(b'\n');
            }
            return out;
        }
    }
    panic!("{path} not in the tar");
}

/// An upper dir with one of everything.
fn every_kind(root: &Path) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/f"), b"hello").unwrap();
    fs::write(root.join("a-b"), b"x").unwrap();
    fs::write(root.join("a/h1"), b"linked").unwrap();
    fs::hard_link(root.join("a/h1"), root.join("a/h2")).unwrap();
    symlink("../etc/passwd", root.join("a/sym")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o600, 0, 0);
    mknod(&root.join("null"), libc::S_IFCHR | 0o666, 1, 3);
    mknod(&root.join("gone"), libc::S_IFCHR, 0, 0);
    // Overlay links its whiteouts to one shared inode: not hard links.
    fs::hard_link(root.join("gone"), root.join("gone2")).unwrap();
    fs::write(root.join("xgone"), b"").unwrap();
    set_xattr(&root.join("xgone"), "trusted.overlay.whiteout", b"");
    fs::create_dir(root.join("o")).unwrap();
    set_xattr(&root.join("o"), "trusted.overlay.opaque", b"y");
    fs::write(root.join("o/new"), b"n").unwrap();
    fs::create_dir(root.join("u")).unwrap();
    set_xattr(&root.join("u"), "user.overlay.opaque", b"y");
    set_xattr(&root.join("a"), "trusted.overlay.origin", b"\0\xfb");
    set_xattr(&root.join("a"), "user.keep", b"me");
    std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
}

#[test]
fn entries_in_order_with_whiteouts_opaque_markers_and_links() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    every_kind(dir.path());
    // Whole seconds: no PAX mtime record (checked elsewhere).
    set_mtime(&dir.path().join("a"), 1_600_000_000, 0);
    let (tar, stats) = layer(dir.path(), &LayerOptions::default());
    let got: Vec<(String, u8, u64, String)> = list(&tar);
    let e = |p: &str, t: u8, s: u64, l: &str| (p.to_string(), t, s, l.to_string());
    assert_eq!(
        got,
        vec![
            e("a/", b'5', 0, ""),
            e("a/b/", b'5', 0, ""),
            e("a/b/f", b'0', 5, ""),
            e("a/h1", b'0', 6, ""),
            e("a/h2", b'1', 0, "a/h1"),
            e("a/sym", b'2', 0, "../etc/passwd"),
            e("a-b", b'0', 1, ""),
            e("fifo", b'6', 0, ""),
            e(".wh.gone", b'0', 0, ""),
            e(".wh.gone2", b'0', 0, ""),
            e("null", b'3', 0, ""),
            e("o/", b'5', 0, ""),
            e("o/.wh..wh..opq", b'0', 0, ""),
            e("o/new", b'0', 1, ""),
            e("u/", b'5', 0, ""),
            e("u/.wh..wh..opq", b'0', 0, ""),
            e(".wh.xgone", b'0', 0, ""),
        ]
    );
    // Overlay's xattrs stay out, the others go in.
    assert_eq!(pax_of(&tar, "a/"), b"29 SCHILY.xattr.user.keep=me\n");
    for path in ["o/", "u/", ".wh.xgone"] {
        let pax = String::from_utf8_lossy(&pax_of(&tar, path)).into_owned();
        assert!(!pax.contains("xattr"), "{path}: {pax}");
    }
    // Device numbers in the ustar header.
    let null = tar_header_of(&tar, "null");
    assert_eq!(&null[329..337], b"0000001\0");
    assert_eq!(&null[337..345], b"0000003\0");
    assert_eq!(
        stats,
        LayerStats {
            entries: 17,
            files: 4,
            dirs: 4,
            symlinks: 1,
            hardlinks: 1,
            nodes: 2,
            whiteouts: 3,
            opaque_dirs: 2,
            sockets_skipped: 1,
            data_bytes: 13,
            tar_bytes: tar.len() as u64,
        }
    );
}

/// The raw ustar header block of `path`.
fn tar_header_of(tar: &[u8], path: &str) -> [u8; BLOCK] {
    let mut a = ::tar::Archive::new(tar);
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.path_bytes().as_ref() == path.as_bytes() {
            return *e.header().as_bytes();
        }
    }
    panic!("{path} not in the tar");
}

#[test]
fn gnu_tar_lists_the_layer_without_complaint() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    every_kind(dir.path());
    let long = "d".repeat(120);
    fs::create_dir(dir.path().join(&long)).unwrap();
    fs::write(dir.path().join(&long).join("f".repeat(200)), b"long").unwrap();
    set_xattr(&dir.path().join("a-b"), "user.k", b"v");
    let (tar, _) = layer(dir.path(), &LayerOptions::default());
    let file = dir.path().join("../layer-gnu.tar");
    fs::write(&file, &tar).unwrap();
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(&file)
        .output()
        .expect("GNU tar installed");
    fs::remove_file(&file).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "tar -tvf: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 19, "{stdout}");
    assert!(
        stdout.contains(&format!("{long}/{}", "f".repeat(200))),
        "{stdout}"
    );
    assert!(stdout.contains("a/h2 link to a/h1"), "{stdout}");
    assert!(stdout.contains("a/sym -> ../etc/passwd"), "{stdout}");
}

#[test]
fn long_names_nanoseconds_and_xattrs_in_pax() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let long_dir = "d".repeat(99);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    fs::create_dir(root.join(&long_dir)).unwrap();
    fs::write(root.join(&long_file), b"data").unwrap();
    set_xattr(&root.join(&long_file), "user.a", b"1");
    set_xattr(
        &root.join(&long_file),
        "security.capability",
        b"\x01\0\0\x02\0\x20\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    );
    set_mtime(&root.join(&long_file), 1_700_000_000, 123_400_000);
    let target = "t".repeat(101);
    symlink(&target, root.join("s")).unwrap();
    set_mtime(&root.join("s"), 1_700_000_000, 0);
    set_mtime(&root.join(&long_dir), 1_600_000_000, 0);
    let (tar, _) = layer(root, &LayerOptions::default());
    // "d"*99 + "/" is exactly 100 bytes: no PAX record for it.
    assert_eq!(pax_of(&tar, &format!("{long_dir}/")), b"");
    let cap = b"\x01\0\0\x02\0\x20\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let expected = [
        format!("260 path={long_file}\n").into_bytes(),
        b"25 mtime=1700000000.1234\n".to_vec(),
        [&b"57 SCHILY.xattr.security.capability="[..], cap, b"\n"].concat(),
        b"25 SCHILY.xattr.user.a=1\n".to_vec(),
    ]
    .concat();
    assert_eq!(pax_of(&tar, &long_file), expected);
    assert_eq!(
        pax_of(&tar, "s"),
        format!("115 linkpath={target}\n").into_bytes()
    );
    // The ustar header keeps the whole seconds and the first 100 bytes.
    let h = tar_header_of(&tar, &long_file);
    assert_eq!(&h[..100], &long_file.as_bytes()[..100]);
    assert_eq!(&h[136..148], format!("{:011o}\0", 1_700_000_000).as_bytes());
}

#[test]
fn excluded_paths_and_clamped_mtimes() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("etc/skel")).unwrap();
    for f in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "etc/passwd",
        "etc/skel/x",
    ] {
        fs::write(root.join(f), f).unwrap();
    }
    mknod(&root.join("etc/motd"), libc::S_IFCHR, 0, 0);
    set_mtime(&root.join("etc/passwd"), 2_000_000_000, 5);
    set_mtime(&root.join("etc/hosts"), 1_000, 7);
    let opts = LayerOptions {
        exclude: [
            "/etc/hosts",
            "/etc/hostname",
            "etc/resolv.conf",
            "/etc/skel/",
            "/etc/motd",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
        mtime_clamp: Some(1_500_000_000),
        ..LayerOptions::default()
    };
    let (tar, _) = layer(root, &opts);
    assert_eq!(names(&tar), ["etc/", "etc/passwd"]);
    assert_eq!(pax_of(&tar, "etc/passwd"), b"", "clamped: no fraction left");
    let h = tar_header_of(&tar, "etc/passwd");
    assert_eq!(&h[136..148], format!("{:011o}\0", 1_500_000_000).as_bytes());
    // Older than the clamp: untouched, fraction kept.
    let opts = LayerOptions {
        exclude: Vec::new(),
        mtime_clamp: Some(1_500_000_000),
        ..LayerOptions::default()
    };
    let (tar, _) = layer(root, &opts);
    assert_eq!(pax_of(&tar, "etc/hosts"), b"24 mtime=1000.000000007\n");
    let diff = diff_entries(
        root,
        &LayerOptions {
            exclude: vec!["/etc/skel".into()],
            mtime_clamp: None,
            ..LayerOptions::default()
        },
        &|_| true,
    )
    .unwrap();
    let diff: Vec<String> = diff.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        diff,
        [
            "C /etc",
            "C /etc/hostname",
            "C /etc/hosts",
            "D /etc/motd",
            "C /etc/passwd",
            "C /etc/resolv.conf"
        ]
    );
}

#[test]
fn big_files_in_chunks_and_empty_files() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(CHUNK * 2 + 1000))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    fs::write(dir.path().join("big"), &big).unwrap();
    fs::write(dir.path().join("empty"), b"").unwrap();
    fs::write(dir.path().join("exact"), vec![9u8; CHUNK]).unwrap();
    for f in ["big", "empty", "exact"] {
        set_mtime(&dir.path().join(f), 1_600_000_000, 0);
    }
    let (tar, stats) = layer(dir.path(), &LayerOptions::default());
    let mut a = ::tar::Archive::new(&tar[..]);
    let mut contents = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        contents.push((String::from_utf8_lossy(&e.path_bytes()).into_owned(), data));
    }
    assert_eq!(contents[0], ("big".into(), big.clone()));
    assert_eq!(contents[1], ("empty".into(), Vec::new()));
    assert_eq!(contents[2], ("exact".into(), vec![9u8; CHUNK]));
    assert_eq!(stats.data_bytes, (big.len() + CHUNK) as u64);
    let padded = |n: usize| n.div_ceil(BLOCK) * BLOCK;
    assert_eq!(tar.len(), 3 * BLOCK + padded(big.len()) + CHUNK + 2 * BLOCK);
}

#[test]
fn overlay_redirects_and_metacopy_are_refused() {
    require_root();
    for key in ["trusted.overlay.redirect", "user.overlay.metacopy"] {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("moved")).unwrap();
        set_xattr(&dir.path().join("moved"), key, b"/old");
        let err = write_layer(dir.path(), io::sink(), &LayerOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().starts_with("/moved: "), "{err}");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = write_layer(file.path(), io::sink(), &LayerOptions::default()).unwrap_err();
    assert!(err.to_string().ends_with("not a directory"), "{err}");
}

#[test]
fn errors_name_the_path_and_operation() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    fs::write(dir.path().join("d/f"), b"x").unwrap();
    // A write error: the output is the one failing.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = write_layer(dir.path(), Full, &LayerOptions::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("writing the layer tar: "),
        "{err}"
    );
    // A missing upper dir.
    let missing = dir.path().join("nope");
    let err = write_layer(&missing, io::sink(), &LayerOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("/: stat upper dir: "), "{err}");
}

#[test]
fn diff_of_every_kind() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    every_kind(dir.path());
    let lower = ["/a", "/a/b", "/o", "/o/new"];
    let diff = diff_entries(dir.path(), &LayerOptions::default(), &|p| {
        lower.iter().any(|l| Path::new(l) == p)
    })
    .unwrap();
    let diff: Vec<String> = diff.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        diff,
        [
            "C /a", "C /a/b", "A /a/b/f", "A /a/h1", "A /a/h2", "A /a/sym", "A /a-b", "A /fifo",
            "D /gone", "D /gone2", "A /null", "C /o", "C /o/new", "A /u", "D /xgone",
        ]
    );
}

#[test]
fn big_ids_and_negative_times_survive_the_unpacker() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (upper, out) = (dir.path().join("upper"), dir.path().join("out"));
    fs::create_dir_all(upper.join("d")).unwrap();
    fs::create_dir(&out).unwrap();
    fs::write(upper.join("d/f"), b"ids").unwrap();
    std::os::unix::fs::lchown(upper.join("d/f"), Some(3_000_000), Some(4_000_000)).unwrap();
    set_mtime(&upper.join("d/f"), -5, 0);
    let (tar, _) = layer(&upper, &LayerOptions::default());
    assert_eq!(
        pax_of(&tar, "d/f"),
        b"15 uid=3000000\n15 gid=4000000\n12 mtime=-5\n"
    );
    let mut unpacker =
        crate::unpack::Unpacker::new(&out, crate::unpack::Options::default()).unwrap();
    unpacker.apply_layer(&tar[..]).unwrap();
    let m = fs::symlink_metadata(out.join("d/f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.uid(), m.gid(), m.mtime()), (3_000_000, 4_000_000, -5));
}
