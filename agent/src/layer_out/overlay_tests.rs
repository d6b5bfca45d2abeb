//! The round trip with a real overlay: changes made through a mounted
//! overlay, its upper dir written as a layer, lower + layer applied with
//! the agent's `Unpacker`, the result compared with the merged view.

use super::tests::{mknod, require_root, set_xattr};
use super::*;
use crate::unpack::{Options, Unpacker};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

/// What the comparison looks at for one path.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    /// `d`, `f`, `l`, `p`, `c`, `b`.
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    /// File contents or symlink target.
    data: Vec<u8>,
    /// Non-overlay xattrs, sorted.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Links of a regular file.
    nlink: u64,
    /// mtime (s, ns) of non-directories (directory mtimes change as
    /// entries are added during unpacking and overlay copy-up).
    mtime: Option<(i64, i64)>,
}

fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all = super::walk::read_xattrs_for_tests(p).unwrap();
    all.retain(|(n, _)| !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay."));
    all
}

/// Every path under `root` (relative) with its `Node`.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let (kind, data) = if ft.is_dir() {
                stack.push(path.clone());
                ('d', Vec::new())
            } else if ft.is_file() {
                ('f', fs::read(&path).unwrap())
            } else if ft.is_symlink() {
                (
                    'l',
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if ft.is_fifo() {
                ('p', Vec::new())
            } else if ft.is_char_device() {
                ('c', m.rdev().to_le_bytes().to_vec())
            } else {
                ('b', m.rdev().to_le_bytes().to_vec())
            };
            let node = Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'd' { 0 } else { m.size() },
                data,
                xattrs: xattrs_of(&path),
                nlink: if kind == 'f' { m.nlink() } else { 0 },
                mtime: (kind != 'd').then(|| (m.mtime(), m.mtime_nsec())),
            };
            let rel = path.strip_prefix(root).unwrap();
            out.insert(rel.to_string_lossy().into_owned(), node);
        }
    }
    out
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Mounts an overlay; unmounted on drop (also when the test fails).
struct Overlay(PathBuf);

impl Overlay {
    /// `extra`: more mount options (redirect_dir, userxattr).
    fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path, extra: &str) -> Overlay {
        // Without redirect_dir and metacopy (which write_layer refuses):
        // renaming a lower directory then copies it (EXDEV, `mv` falls back).
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},metacopy=off,index=off,{extra}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let (src, target, fstype, data) = (
            cstr("overlay"),
            cstr(merged.to_str().unwrap()),
            cstr("overlay"),
            cstr(&opts),
        );
        // SAFETY: all strings are NUL-terminated and outlive the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount overlay ({opts}): {}",
            io::Error::last_os_error()
        );
        Overlay(merged.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let target = cstr(self.0.to_str().unwrap());
        // SAFETY: NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// The image: what the container starts from.
fn populate_lower(lower: &Path) {
    for d in [
        "etc",
        "usr/bin",
        "var/old/sub",
        "var/keep",
        "data",
        "recreate/inner",
        "moveme",
    ] {
        fs::create_dir_all(lower.join(d)).unwrap();
    }
    fs::write(lower.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(lower.join("etc/hostname"), b"image\n").unwrap();
    fs::write(lower.join("usr/bin/tool"), vec![0x7f; 70_000]).unwrap();
    fs::set_permissions(
        lower.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(lower.join("var/old/a"), b"a").unwrap();
    fs::write(lower.join("var/old/sub/b"), b"b").unwrap();
    fs::write(lower.join("var/keep/k"), b"k").unwrap();
    fs::write(lower.join("data/rm_me"), b"bye").unwrap();
    fs::write(lower.join("data/stay"), b"stay").unwrap();
    fs::write(lower.join("recreate/x"), b"x").unwrap();
    fs::write(lower.join("recreate/inner/y"), b"y").unwrap();
    fs::write(lower.join("mvsrc"), b"moved").unwrap();
    fs::write(lower.join("moveme/f"), b"in a moved dir").unwrap();
    fs::write(lower.join("tagged"), b"t").unwrap();
    set_xattr(&lower.join("tagged"), "user.origin", b"lower");
    symlink("etc/passwd", lower.join("link")).unwrap();
    lchown(&lower.join("var/keep"), 33, 33);
}

/// The container's changes, made through the merged mount.
fn change_merged(m: &Path) {
    fs::create_dir(m.join("new")).unwrap();
    fs::write(m.join("new/file"), b"new content").unwrap();
    fs::hard_link(m.join("new/file"), m.join("new/file2")).unwrap();
    symlink("../etc/passwd", m.join("new/sym")).unwrap();
    mknod(&m.join("new/fifo"), libc::S_IFIFO | 0o640, 0, 0);
    set_xattr(&m.join("new/file"), "user.test", b"value");
    let long = format!("new/{}", "n".repeat(200));
    fs::write(m.join(long), b"long name").unwrap();
    let mut passwd = fs::read(m.join("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"app:x:1000:1000::/home/app:/bin/sh\n");
    fs::write(m.join("etc/passwd"), passwd).unwrap();
    fs::remove_file(m.join("data/rm_me")).unwrap();
    fs::remove_dir_all(m.join("var/old")).unwrap();
    fs::remove_dir_all(m.join("recreate")).unwrap();
    fs::create_dir(m.join("recreate")).unwrap();
    fs::write(m.join("recreate/z"), b"z").unwrap();
    fs::set_permissions(m.join("usr/bin/tool"), fs::Permissions::from_mode(0o4750)).unwrap();
    lchown(&m.join("etc/hostname"), 1000, 1000);
    set_xattr(&m.join("tagged"), "user.color", b"blue");
    fs::rename(m.join("mvsrc"), m.join("mvdst")).unwrap();
    // A lower directory cannot be renamed without redirect_dir: EXDEV,
    // and `mv` copies it instead.
    let err = fs::rename(m.join("moveme"), m.join("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    fs::create_dir(m.join("moved")).unwrap();
    fs::copy(m.join("moveme/f"), m.join("moved/f")).unwrap();
    fs::remove_dir_all(m.join("moveme")).unwrap();
    fs::remove_file(m.join("link")).unwrap();
    symlink("/etc/hostname", m.join("link")).unwrap();
    // Per-container files hull bind-mounts: excluded from the layer.
    fs::write(m.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
}

fn first_difference(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) -> String {
    for (k, v) in a {
        match b.get(k) {
            None => return format!("{k} only in the merged view"),
            Some(w) if w != v => return format!("{k}: merged {v:?}\nunpacked {w:?}"),
            _ => {}
        }
    }
    let extra: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    format!("only in the unpacked tree: {extra:?}")
}

#[test]
fn overlay_upper_dir_round_trips_through_the_unpacker() {
    round_trip("redirect_dir=off", "trusted.overlay.opaque");
}

/// With `userxattr` overlay keeps its marks in `user.overlay.*`.
#[test]
fn overlay_with_userxattr_round_trips_through_the_unpacker() {
    // userxattr refuses redirect_dir=off (it wants "nofollow": none made,
    // none followed).
    round_trip("redirect_dir=nofollow,userxattr", "user.overlay.opaque");
}

/// `opaque_xattr`: where the overlay marks the recreated directory.
fn round_trip(mount_options: &str, opaque_xattr: &str) {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged, out] = ["lower", "upper", "work", "merged", "out"].map(|d| {
        let p = tmp.path().join(d);
        fs::create_dir(&p).unwrap();
        p
    });
    populate_lower(&lower);
    let mut merged_view = {
        let _mount = Overlay::mount(&lower, &upper, &work, &merged, mount_options);
        change_merged(&merged);
        snapshot(&merged)
    };
    merged_view.remove("etc/hosts");
    let opaque = super::walk::read_xattrs_for_tests(&upper.join("recreate")).unwrap();
    assert!(
        opaque
            .iter()
            .any(|(n, v)| n == opaque_xattr.as_bytes() && v == b"y"),
        "the overlay marks /recreate opaque with {opaque_xattr}: {opaque:?}"
    );

    let mut lower_tar = Vec::new();
    write_layer(&lower, &mut lower_tar, &LayerOptions::default()).unwrap();
    let opts = LayerOptions {
        exclude: vec!["/etc/hosts".into()],
        mtime_clamp: None,
        ..LayerOptions::default()
    };
    let mut upper_tar = Vec::new();
    let stats = write_layer(&upper, &mut upper_tar, &opts).unwrap();

    let mut unpacker = Unpacker::new(&out, Options::default()).unwrap();
    unpacker.apply_layer(&lower_tar[..]).unwrap();
    unpacker.apply_layer(&upper_tar[..]).unwrap();
    let unpacked = snapshot(&out);
    assert!(
        merged_view == unpacked,
        "{}",
        first_difference(&merged_view, &unpacked)
    );

    assert_eq!(
        (stats.whiteouts, stats.opaque_dirs, stats.hardlinks),
        (4, 1, 1),
        "{stats:?}"
    );

    let lower_exists =
        |p: &Path| fs::symlink_metadata(lower.join(p.strip_prefix("/").unwrap())).is_ok();
    let diff: Vec<String> = diff_entries(&upper, &opts, &lower_exists)
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(diff, expected_diff());
}

/// `docker diff` of `change_merged`, in the layer's order.
fn expected_diff() -> Vec<String> {
    let long = format!("A /new/{}", "n".repeat(200));
    [
        "C /data",
        "D /data/rm_me",
        "C /etc",
        "C /etc/hostname",
        "C /etc/passwd",
        "C /link",
        "A /moved",
        "A /moved/f",
        "D /moveme",
        "A /mvdst",
        "D /mvsrc",
        "A /new",
        "A /new/fifo",
        "A /new/file",
        "A /new/file2",
        long.as_str(),
        "A /new/sym",
        "C /recreate",
        "A /recreate/z",
        "C /tagged",
        "C /usr",
        "C /usr/bin",
        "C /usr/bin/tool",
        "C /var",
        "D /var/old",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
