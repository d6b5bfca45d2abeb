//! Host tests of the layer unpacker (they run as root, into temp dirs).

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

// ---------------------------------------------------------------- tar writer

/// One header's fields.
#[derive(Clone)]
pub(super) struct H {
    pub(super) name: Vec<u8>,
    pub(super) typ: u8,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: u64,
    pub(super) link: Vec<u8>,
    pub(super) major: u32,
    pub(super) minor: u32,
}

impl H {
    pub(super) fn new(name: &str, typ: u8) -> H {
        H {
            name: name.as_bytes().to_vec(),
            typ,
            size: 0,
            mode: if typ == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: Vec::new(),
            major: 0,
            minor: 0,
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    assert!(s.len() < field.len(), "value too large for field");
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

fn header_block(h: &H) -> [u8; 512] {
    let mut b = [0u8; 512];
    let n = h.name.len().min(100);
    b[..n].copy_from_slice(&h.name[..n]);
    octal(&mut b[100..108], u64::from(h.mode));
    octal(&mut b[108..116], u64::from(h.uid));
    octal(&mut b[116..124], u64::from(h.gid));
    if h.size < 0o77777777777 {
        octal(&mut b[124..136], h.size);
    } else {
        // GNU base-256.
        b[124] = 0x80;
        b[128..136].copy_from_slice(&h.size.to_be_bytes());
    }
    octal(&mut b[136..148], h.mtime);
    b[156] = h.typ;
    let l = h.link.len().min(100);
    b[157..157 + l].copy_from_slice(&h.link[..l]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(h.major));
    octal(&mut b[337..345], u64::from(h.minor));
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    b
}

#[derive(Default)]
pub(super) struct T {
    out: Vec<u8>,
}

impl T {
    pub(super) fn raw_entry(&mut self, h: &H, data: &[u8]) -> &mut Self {
        self.out.extend_from_slice(&header_block(h));
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub(super) fn entry(&mut self, mut h: H, data: &[u8]) -> &mut Self {
        h.size = data.len() as u64;
        self.raw_entry(&h, data)
    }
    pub(super) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(H::new(name, b'0'), data)
    }
    pub(super) fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(H::new(name, b'5'), b"")
    }
    pub(super) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = H::new(name, b'2');
        h.link = target.as_bytes().to_vec();
        h.mode = 0o777;
        self.entry(h, b"")
    }
    pub(super) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = H::new(name, b'1');
        h.link = target.as_bytes().to_vec();
        self.entry(h, b"")
    }
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry(H::new("././@PaxHeader", b'x'), &data)
    }
    pub(super) fn gnu_long(&mut self, typ: u8, value: &str) -> &mut Self {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.entry(H::new("././@LongLink", typ), &v)
    }
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.out);
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

// ---------------------------------------------------------------- helpers

struct Env {
    _tmp: tempfile::TempDir,
    /// The unpack target.
    root: PathBuf,
    /// A directory beside the target that nothing may touch.
    outside: PathBuf,
}

fn new_env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();
    Env {
        root,
        outside,
        _tmp: tmp,
    }
}

impl Env {
    fn unpacker(&self) -> Unpacker {
        Unpacker::new(&self.root, Options::default()).unwrap()
    }
    fn apply(&self, layers: &[Vec<u8>]) -> Result<Stats, Error> {
        let mut u = self.unpacker();
        for l in layers {
            u.apply_layer(&l[..])?;
        }
        Ok(u.stats().clone())
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    /// The temp dir outside the target is exactly as created.
    fn assert_outside_untouched(&self) {
        let parent = self.root.parent().unwrap();
        let mut names: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["outside", "root"],
            "entries appeared beside the target"
        );
        let inside: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(inside, ["victim"], "entries appeared outside the target");
        assert_eq!(fs::read(self.outside.join("victim")).unwrap(), b"original");
        assert_eq!(
            fs::metadata(self.outside.join("victim")).unwrap().nlink(),
            1
        );
    }
}

pub(super) fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

pub(super) fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: valid strings and buffer.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(super) fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

pub(super) fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------- entry types

#[test]
fn every_entry_type() {
    let env = new_env();
    let mut t = T::default();
    t.dir("d/")
        .file("d/f", b"hello")
        .symlink("d/s", "f")
        .hardlink("d/h", "d/f");
    let mut c = H::new("d/null", b'3');
    (c.major, c.minor) = (1, 3);
    let mut b = H::new("d/blk", b'4');
    (b.major, b.minor) = (7, 42);
    t.entry(c, b"")
        .entry(b, b"")
        .entry(H::new("d/fifo", b'6'), b"");
    t.file("d/empty", b"");
    let s = env.apply(&[t.finish()]).unwrap();
    assert_eq!(fs::read(env.p("d/f")).unwrap(), b"hello");
    assert_eq!(fs::read(env.p("d/empty")).unwrap(), b"");
    assert_eq!(fs::read_link(env.p("d/s")).unwrap(), Path::new("f"));
    assert_eq!(lmeta(&env.p("d/h")).ino(), lmeta(&env.p("d/f")).ino());
    assert_eq!(lmeta(&env.p("d/f")).nlink(), 2);
    if is_root() {
        let m = lmeta(&env.p("d/null"));
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), libc::makedev(1, 3));
        let m = lmeta(&env.p("d/blk"));
        assert!(m.file_type().is_block_device());
        assert_eq!(m.rdev(), libc::makedev(7, 42));
    }
    assert!(lmeta(&env.p("d/fifo")).file_type().is_fifo());
    assert_eq!(
        (s.files, s.dirs, s.symlinks, s.hardlinks, s.nodes),
        (2, 1, 1, 1, 3)
    );
    assert_eq!(s.data_bytes, 5);
    assert_eq!(s.layers, 1);
    assert!(s.tar_bytes > 0 && s.compressed_bytes == s.tar_bytes);
}

#[test]
fn owners_modes_times_xattrs() {
    let env = new_env();
    let mut t = T::default();
    let mut d = H::new("sticky", b'5');
    d.mode = 0o1777;
    d.mtime = 1_000_000;
    let mut sg = H::new("sgid", b'5');
    sg.mode = 0o2750;
    sg.gid = 50;
    let mut f = H::new("sticky/suid", b'0');
    (f.mode, f.uid, f.gid, f.mtime) = (0o4755, 1234, 5678, 1_234_567);
    let mut s = H::new("sticky/link", b'2');
    (s.link, s.uid, s.gid, s.mtime) = (b"suid".to_vec(), 42, 43, 7_654_321);
    let mut inherit = H::new("sgid/f", b'0');
    inherit.mode = 0o600;
    let mut fifo = H::new("sgid/fifo", b'6');
    (fifo.mode, fifo.uid, fifo.mtime) = (0o640, 9, 99);
    t.entry(d, b"").entry(sg, b"");
    t.pax(&[
        ("SCHILY.xattr.user.hull", b"v\0binary"),
        ("mtime", b"1234567.5"),
    ]);
    t.entry(f, b"#!/bin/sh\n");
    t.entry(s, b"").entry(inherit, b"x").entry(fifo, b"");
    env.apply(&[t.finish()]).unwrap();

    let m = lmeta(&env.p("sticky"));
    assert_eq!(m.permissions().mode() & 0o7777, 0o1777);
    // Set after "suid" and "link" were created inside it.
    assert_eq!(m.mtime(), 1_000_000);
    let m = lmeta(&env.p("sticky/suid"));
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567, 500_000_000));
    let m = lmeta(&env.p("sticky/link"));
    assert!(m.file_type().is_symlink());
    assert_eq!(m.mtime(), 7_654_321);
    let m = lmeta(&env.p("sgid"));
    assert_eq!(m.permissions().mode() & 0o7777, 0o2750);
    let m = lmeta(&env.p("sgid/f"));
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        lmeta(&env.p("sgid/fifo")).permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(lmeta(&env.p("sgid/fifo")).mtime(), 99);
    if is_root() {
        let m = lmeta(&env.p("sticky/suid"));
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let m = lmeta(&env.p("sticky/link"));
        assert_eq!((m.uid(), m.gid()), (42, 43));
        // Owner 0:0 in the archive even though sgid/ is group 50.
        assert_eq!(lmeta(&env.p("sgid/f")).gid(), 0);
        assert_eq!(lmeta(&env.p("sgid/fifo")).uid(), 9);
    }
    match getxattr(&env.p("sticky/suid"), "user.hull") {
        Some(v) => assert_eq!(v, b"v\0binary"),
        None => eprintln!("user xattrs not supported on the temp dir's filesystem"),
    }
}

/// Container mode: owners land shifted into the user namespace's range;
/// an owner the namespace cannot map is refused, not stored as is.
#[test]
fn owners_shift_into_a_user_namespace_range() {
    let env = new_env();
    let shift = IdShift {
        uid: 100_000,
        gid: 200_000,
        size: 65_536,
    };
    let opts = Options {
        id_shift: Some(shift),
        ..Options::default()
    };
    let mut t = T::default();
    let mut f = H::new("f", b'0');
    (f.uid, f.gid) = (1000, 50);
    let root_dir = H::new("d", b'5');
    let mut link = H::new("d/l", b'2');
    (link.link, link.uid) = (b"../f".to_vec(), 7);
    t.entry(f, b"x").entry(root_dir, b"").entry(link, b"");
    let mut u = Unpacker::new(&env.root, opts.clone()).unwrap();
    u.apply_layer(&t.finish()[..]).unwrap();
    if is_root() {
        let owner = |p: &str| {
            let m = lmeta(&env.p(p));
            (m.uid(), m.gid())
        };
        assert_eq!(owner("f"), (101_000, 200_050));
        assert_eq!(owner("d"), (100_000, 200_000));
        assert_eq!(owner("d/l"), (100_007, 200_000));
    }
    let mut t = T::default();
    let mut far = H::new("far", b'0');
    far.uid = 70_000;
    t.entry(far, b"");
    let mut u = Unpacker::new(&env.root, opts).unwrap();
    let err = u.apply_layer(&t.finish()[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "far: uid 70000 is outside the container's user namespace (0-65535)"
    );
    assert!(!exists(&env.p("far")));
}

#[test]
fn long_names_pax_and_gnu() {
    let env = new_env();
    let long_dir = format!("{}/{}", "a".repeat(120), "b".repeat(90));
    let long_file = format!("{long_dir}/{}", "c".repeat(150));
    let mut t = T::default();
    // PAX path for the directory and a file; GNU L/K for a symlink.
    t.pax(&[("path", long_dir.as_bytes())])
        .dir("truncated-name/");
    t.pax(&[("path", long_file.as_bytes())])
        .file("truncated", b"pax");
    let gnu_name = format!("{long_dir}/{}", "g".repeat(200));
    let gnu_target = format!("../{}", "t".repeat(180));
    t.gnu_long(b'L', &gnu_name).gnu_long(b'K', &gnu_target);
    t.symlink("short", "short-target");
    // A hard link to the long PAX name, through a PAX linkpath.
    t.pax(&[("linkpath", long_file.as_bytes())])
        .hardlink("hl", "x");
    // ustar prefix field.
    let mut h = H::new("name-part", b'0');
    let prefix = "p".repeat(150);
    let mut blk = header_block(&{
        h.size = 2;
        h.clone()
    });
    blk[345..345 + 150].copy_from_slice(prefix.as_bytes());
    blk[148..156].copy_from_slice(b"        ");
    let sum: u64 = blk.iter().map(|&x| u64::from(x)).sum();
    blk[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    t.out.extend_from_slice(&blk);
    t.out.extend_from_slice(b"ok");
    t.out.extend(std::iter::repeat_n(0u8, 510));
    env.apply(&[t.finish()]).unwrap();
    assert_eq!(fs::read(env.p(&long_file)).unwrap(), b"pax");
    assert_eq!(
        fs::read_link(env.p(&gnu_name)).unwrap(),
        Path::new(&gnu_target)
    );
    assert_eq!(lmeta(&env.p("hl")).ino(), lmeta(&env.p(&long_file)).ino());
    assert_eq!(
        fs::read(env.p(&format!("{prefix}/name-part"))).unwrap(),
        b"ok"
    );
    assert!(!exists(&env.p("truncated")) && !exists(&env.p("short")));
}

#[test]
fn long_names_from_the_tar_crate() {
    let env = new_env();
    let name = format!("{}/{}", "x".repeat(130), "y".repeat(130));
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o640);
    h.set_mtime(12345);
    h.set_entry_type(::tar::EntryType::Regular);
    b.append_data(&mut h, &name, &b"data"[..]).unwrap();
    let mut l = ::tar::Header::new_gnu();
    l.set_entry_type(::tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "lnk", "z".repeat(150)).unwrap();
    let mut p = ::tar::Header::new_ustar();
    p.set_size(3);
    p.set_mode(0o644);
    p.set_entry_type(::tar::EntryType::Regular);
    let pax_name = format!("{}/{}", "q".repeat(120), "r".repeat(180));
    b.append_pax_extensions([("path", pax_name.as_bytes())])
        .unwrap();
    b.append_data(&mut p, "short", &b"pax"[..]).unwrap();
    let data = b.into_inner().unwrap();
    env.apply(&[data]).unwrap();
    assert_eq!(fs::read(env.p(&name)).unwrap(), b"data");
    assert_eq!(lmeta(&env.p(&name)).mtime(), 12345);
    assert_eq!(
        fs::read_link(env.p("lnk")).unwrap(),
        Path::new(&"z".repeat(150))
    );
    assert_eq!(fs::read(env.p(&pax_name)).unwrap(), b"pax");
}

/// Every file under `dir`: (relative path, kind, mode, uid, gid, mtime,
/// content or link target or rdev, nlink).
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut ents: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        ents.sort();
        for p in ents {
            let m = lmeta(&p);
            let ft = m.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {:?}", fs::read_link(&p).unwrap())
            } else if ft.is_file() {
                format!("file {:?}", fs::read(&p).unwrap())
            } else {
                format!("node {:o} {}", m.mode() & libc::S_IFMT, m.rdev())
            };
            let mtime = if ft.is_dir() { 0 } else { m.mtime() };
            out.push((
                p.strip_prefix(base).unwrap().to_path_buf(),
                format!(
                    "{what} mode={:o} {}:{} mtime={mtime} nlink={}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.nlink()
                ),
            ));
            if ft.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Archives made by GNU tar (gnu and posix formats) unpack to the tree
/// they were made from.
#[test]
fn gnu_tar_archives_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let long = format!(
        "{}/{}/{}",
        "l".repeat(100),
        "m".repeat(100),
        "n".repeat(120)
    );
    fs::create_dir_all(src.join(&long)).unwrap();
    fs::write(src.join(&long).join("deep"), b"deep file").unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::hard_link(src.join("etc/passwd"), src.join("etc/passwd-")).unwrap();
    std::os::unix::fs::symlink("../etc/passwd", src.join(&long).join("rel")).unwrap();
    fs::write(src.join("big"), vec![7u8; 3 << 20]).unwrap();
    fs::set_permissions(src.join("big"), fs::Permissions::from_mode(0o4711)).unwrap();
    let fifo = CString::new(src.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    if is_root() {
        std::os::unix::fs::lchown(src.join("etc"), Some(101), Some(202)).unwrap();
    }
    for format in ["gnu", "posix"] {
        let tarball = tmp.path().join(format!("{format}.tar"));
        let st = Command::new("tar")
            .args(["--format", format, "--xattrs", "-cf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let dst = tmp.path().join(format!("dst-{format}"));
        fs::create_dir(&dst).unwrap();
        let mut u = Unpacker::new(&dst, Options::default()).unwrap();
        let s = u.apply_layer(fs::File::open(&tarball).unwrap()).unwrap();
        assert_eq!(snapshot(&src), snapshot(&dst), "format {format}");
        assert_eq!(s.hardlinks, 1);
        assert_eq!(s.compressed_bytes, fs::metadata(&tarball).unwrap().len());
    }
}

// ---------------------------------------------------------------- layers

#[test]
fn whiteouts_and_opaque_dirs() {
    let env = new_env();
    let mut l1 = T::default();
    l1.dir("a/")
        .file("a/f1", b"1")
        .dir("a/sub/")
        .file("a/sub/f2", b"2");
    l1.dir("b/")
        .file("b/f3", b"3")
        .dir("b/deep/")
        .file("b/deep/f", b"");
    l1.dir("d/")
        .file("d/old", b"old")
        .dir("d/olddir/")
        .file("d/olddir/x", b"");
    l1.dir("e/")
        .file("e/old", b"old")
        .dir("e/keep/")
        .file("e/keep/lower", b"");
    l1.file("same", b"lower");
    let mut l2 = T::default();
    l2.file(".wh.b", b"");
    l2.file("a/.wh.f1", b"");
    l2.file("a/.wh.missing", b""); // nothing to delete: fine
    l2.file("nodir/.wh.x", b""); // parent missing: nothing made
                                 // Opaque marker first, then the layer's own content.
    l2.file("d/.wh..wh..opq", b"").file("d/new", b"new");
    // Content first, then the marker; e/keep/ exists below and gets a new
    // file without its own directory entry.
    l2.file("e/new", b"new").file("e/keep/upper", b"up");
    l2.file("e/.wh..wh..opq", b"");
    // A layer never hides its own files.
    l2.file("same", b"upper").file(".wh.same", b"");
    let s = env.apply(&[l1.finish(), l2.finish()]).unwrap();
    assert!(!exists(&env.p("b")));
    assert!(!exists(&env.p("a/f1")));
    assert_eq!(fs::read(env.p("a/sub/f2")).unwrap(), b"2");
    assert!(!exists(&env.p("nodir")));
    assert!(!exists(&env.p("d/old")) && !exists(&env.p("d/olddir")));
    assert_eq!(fs::read(env.p("d/new")).unwrap(), b"new");
    assert!(!exists(&env.p("e/old")));
    assert_eq!(fs::read(env.p("e/new")).unwrap(), b"new");
    assert_eq!(fs::read(env.p("e/keep/upper")).unwrap(), b"up");
    assert!(!exists(&env.p("e/keep/lower")));
    assert_eq!(fs::read(env.p("same")).unwrap(), b"upper");
    for p in [
        "a/.wh.f1",
        "d/.wh..wh..opq",
        "e/.wh..wh..opq",
        ".wh.b",
        ".wh.same",
    ] {
        assert!(!exists(&env.p(p)), "{p} was created");
    }
    assert_eq!(s.whiteouts, 2);
    assert_eq!(s.opaque_dirs, 2);
    assert_eq!(s.layers, 2);
}

#[test]
fn opaque_root_and_whiteout_of_whiteout_names() {
    let env = new_env();
    let mut l1 = T::default();
    l1.file("x", b"").dir("y/").file("y/z", b"");
    let mut l2 = T::default();
    l2.file("./.wh..wh..opq", b"").file("kept", b"k");
    env.apply(&[l1.finish(), l2.finish()]).unwrap();
    let names: Vec<_> = fs::read_dir(&env.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["kept"]);
}

#[test]
fn type_replacement() {
    let env = new_env();
    let mut l1 = T::default();
    l1.file("x", b"file")
        .dir("y/")
        .file("y/inner", b"")
        .file("z", b"z");
    l1.file("w-target", b"t").symlink("w", "w-target");
    l1.dir("keep/").file("keep/lower", b"lower");
    l1.dir("fifo-then-dir/");
    let mut l2 = T::default();
    l2.dir("x/").file("x/now-a-dir", b"");
    l2.file("y", b"now a file");
    l2.symlink("z", "x");
    l2.file("w", b"replaces the symlink");
    let mut k = H::new("keep/", b'5');
    k.mode = 0o700;
    l2.entry(k, b"").entry(H::new("fifo-then-dir", b'6'), b"");
    env.apply(&[l1.finish(), l2.finish()]).unwrap();
    assert!(lmeta(&env.p("x")).is_dir());
    assert!(exists(&env.p("x/now-a-dir")));
    assert_eq!(fs::read(env.p("y")).unwrap(), b"now a file");
    assert_eq!(fs::read_link(env.p("z")).unwrap(), Path::new("x"));
    assert!(lmeta(&env.p("w")).is_file());
    assert_eq!(fs::read(env.p("w-target")).unwrap(), b"t");
    // An existing directory is kept, its metadata updated.
    assert_eq!(fs::read(env.p("keep/lower")).unwrap(), b"lower");
    assert_eq!(lmeta(&env.p("keep")).permissions().mode() & 0o7777, 0o700);
    assert!(lmeta(&env.p("fifo-then-dir")).file_type().is_fifo());
    // The same name twice in one layer: the last wins.
    let mut l3 = T::default();
    l3.file("dup", b"first").file("dup", b"second");
    env.apply(&[l3.finish()]).unwrap();
    assert_eq!(fs::read(env.p("dup")).unwrap(), b"second");
}

#[test]
fn gzip_and_zstd_layers() {
    let env = new_env();
    let mut l1 = T::default();
    l1.dir("g/")
        .file("g/a", &vec![1u8; 200_000])
        .file("g/b", b"b");
    let mut l2 = T::default();
    l2.dir("z/")
        .file("z/a", &vec![2u8; 300_000])
        .file("g/.wh.b", b"");
    let l1 = l1.finish();
    let l2 = l2.finish();
    let (gz, zs) = (gzip(&l1), zstd(&l2));
    assert_eq!(Compression::detect(&gz), Compression::Gzip);
    assert_eq!(Compression::detect(&zs), Compression::Zstd);
    assert_eq!(Compression::detect(&l1), Compression::None);
    let s = env.apply(&[gz.clone(), zs.clone()]).unwrap();
    assert_eq!(fs::read(env.p("g/a")).unwrap(), vec![1u8; 200_000]);
    assert_eq!(fs::read(env.p("z/a")).unwrap(), vec![2u8; 300_000]);
    assert!(!exists(&env.p("g/b")));
    assert_eq!(s.compressed_bytes, (gz.len() + zs.len()) as u64);
    assert_eq!(s.tar_bytes, (l1.len() + l2.len()) as u64);
    // Multi-member gzip and multi-frame zstd.
    let env2 = new_env();
    let (a, b) = l1.split_at(1024);
    let mut multi = gzip(a);
    multi.extend(gzip(b));
    let (c, d) = l2.split_at(2048);
    let mut frames = zstd(c);
    frames.extend(zstd(d));
    env2.apply(&[multi, frames]).unwrap();
    assert_eq!(fs::read(env2.p("z/a")).unwrap(), vec![2u8; 300_000]);
    // A layer compressed by the zstd tool, if present.
    if let Ok(out) = Command::new("zstd")
        .arg("-c")
        .arg("-q")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        let mut child = out;
        let mut stdin = child.stdin.take().unwrap();
        let l1c = l1.clone();
        let w = std::thread::spawn(move || stdin.write_all(&l1c));
        let o = child.wait_with_output().unwrap();
        w.join().unwrap().unwrap();
        let env3 = new_env();
        env3.apply(&[o.stdout]).unwrap();
        assert_eq!(fs::read(env3.p("g/b")).unwrap(), b"b");
    }
}

#[test]
fn empty_layer_and_no_end_blocks() {
    let env = new_env();
    env.apply(&[Vec::new()]).unwrap();
    let mut t = T::default();
    t.file("f", b"x");
    env.apply(&[t.out.clone()]).unwrap(); // no zero blocks at the end
    assert_eq!(fs::read(env.p("f")).unwrap(), b"x");
}

// ---------------------------------------------------------------- hostile

#[test]
fn dotdot_and_absolute_paths_stay_inside() {
    let env = new_env();
    let mut t = T::default();
    t.file("../../escape", b"1");
    t.file("../outside/victim", b"overwritten?");
    t.file("/abs/file", b"2");
    t.file("a/../../../b", b"3");
    t.dir("/");
    let mut h = H::new("ok", b'1');
    h.link = b"../../outside/victim".to_vec();
    t.entry(h, b"");
    let r = env.apply(&[t.finish()]);
    // The hard link to "outside" resolves to <root>/outside/victim, which
    // is the file the layer wrote there: a link inside.
    r.unwrap();
    assert_eq!(fs::read(env.p("escape")).unwrap(), b"1");
    assert_eq!(fs::read(env.p("outside/victim")).unwrap(), b"overwritten?");
    assert_eq!(fs::read(env.p("abs/file")).unwrap(), b"2");
    assert_eq!(fs::read(env.p("b")).unwrap(), b"3");
    assert_eq!(
        lmeta(&env.p("ok")).ino(),
        lmeta(&env.p("outside/victim")).ino()
    );
    env.assert_outside_untouched();
}

#[test]
fn symlinks_cannot_lead_outside() {
    let env = new_env();
    let outside = env.outside.to_str().unwrap().to_string();
    let mut l1 = T::default();
    l1.symlink("to-root", "/");
    l1.symlink("up", "../..");
    l1.symlink("abs-out", &outside);
    l1.symlink("rel-out", "../outside");
    l1.symlink("victim-link", &format!("{outside}/victim"));
    l1.dir("sub/").symlink("sub/up2", "../../../..");
    // Through links made in the same layer.
    l1.file("to-root/via-root", b"r");
    l1.file("up/via-up", b"u");
    l1.file("sub/up2/via-up2", b"u2");
    let mut l2 = T::default();
    // Through links made by an earlier layer.
    l2.file("abs-out/victim", b"pwned");
    l2.file("rel-out/victim", b"pwned");
    l2.file("rel-out/new", b"new");
    l2.dir("up/newdir/").file("up/newdir/f", b"");
    // Replacing a symlink to an outside file must not write through it.
    l2.file("victim-link", b"pwned");
    let mut sl = H::new("rel-out/node", b'6');
    sl.mode = 0o600;
    l2.entry(sl, b"");
    env.apply(&[l1.finish(), l2.finish()]).unwrap();
    env.assert_outside_untouched();
    // They landed inside, as if the target were "/".
    assert_eq!(fs::read(env.p("via-root")).unwrap(), b"r");
    assert_eq!(fs::read(env.p("via-up")).unwrap(), b"u");
    assert_eq!(fs::read(env.p("via-up2")).unwrap(), b"u2");
    assert!(exists(&env.p("newdir/f")));
    assert_eq!(fs::read(env.p("victim-link")).unwrap(), b"pwned");
    assert!(lmeta(&env.p("victim-link")).is_file());
    // abs-out -> <tmp>/outside resolved inside the root.
    let inside_abs = env
        .root
        .join(outside.trim_start_matches('/'))
        .join("victim");
    assert_eq!(fs::read(inside_abs).unwrap(), b"pwned");
}

#[test]
fn hardlinks_to_outside_fail() {
    for target in [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "etc-link/passwd",
    ] {
        let env = new_env();
        let before = fs::metadata("/etc/passwd").unwrap().nlink();
        let mut t = T::default();
        t.symlink("etc-link", "/etc");
        t.hardlink("pw", target);
        let err = env.apply(&[t.finish()]).unwrap_err();
        assert!(
            matches!(err, Error::Unsafe { .. }),
            "{target}: unexpected {err}"
        );
        assert!(err.to_string().contains("pw"), "{err}");
        assert!(!exists(&env.p("pw")));
        assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), before);
        env.assert_outside_untouched();
    }
    // Through a symlink to the outside dir made by an earlier layer.
    let env = new_env();
    let mut l1 = T::default();
    l1.symlink("out", env.outside.to_str().unwrap());
    let mut l2 = T::default();
    l2.hardlink("pw", "out/victim");
    assert!(env.apply(&[l1.finish(), l2.finish()]).is_err());
    env.assert_outside_untouched();
}

#[test]
fn truncated_streams() {
    let mut t = T::default();
    t.file("a", &vec![5u8; 10_000]).file("b", b"b");
    let full = t.finish();
    // Inside a file's data, inside a header, inside the padding.
    for cut in [1000, 512 + 5000, 10_752 + 100, 512 + 10_000 + 3] {
        let env = new_env();
        let err = env.apply(&[full[..cut].to_vec()]).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "cut {cut}: {err}");
    }
    // A truncated gzip stream.
    let gz = gzip(&full);
    let env = new_env();
    let err = env.apply(&[gz[..gz.len() / 2].to_vec()]).unwrap_err();
    assert!(
        matches!(err, Error::Truncated { .. } | Error::Read(_)),
        "{err}"
    );
    // A truncated zstd stream.
    let zs = zstd(&full);
    let env = new_env();
    assert!(env.apply(&[zs[..zs.len() - 20].to_vec()]).is_err());
}

#[test]
fn huge_sizes_are_truncation_not_loops() {
    for size in [0o77777777777u64, 1 << 62] {
        let env = new_env();
        let mut t = T::default();
        let mut h = H::new("bomb", b'0');
        h.size = size;
        t.raw_entry(&h, &[1u8; 4096]);
        let err = env.apply(&[t.finish()]).unwrap_err();
        assert!(
            matches!(err, Error::Truncated { ref path } if path == "bomb"),
            "{err}"
        );
    }
    // A long-name record claiming a huge size is refused outright.
    let env = new_env();
    let mut t = T::default();
    let mut h = H::new("././@LongLink", b'L');
    h.size = 1 << 40;
    t.raw_entry(&h, b"x");
    let err = env.apply(&[t.finish()]).unwrap_err();
    assert!(matches!(err, Error::BadHeader { .. }), "{err}");
}

#[test]
fn bad_headers_and_sparse_files() {
    let env = new_env();
    let mut t = T::default();
    t.file("f", b"x");
    let mut data = t.finish();
    data[0] = b'g'; // checksum no longer matches
    let err = env.apply(&[data]).unwrap_err();
    assert!(matches!(err, Error::BadHeader { .. }), "{err}");
    let err = env
        .apply(&[b"this is not a tar stream".repeat(40)])
        .unwrap_err();
    assert!(matches!(err, Error::BadHeader { .. }), "{err}");
    let mut t = T::default();
    t.entry(H::new("sparse", b'S'), b"");
    let err = env.apply(&[t.finish()]).unwrap_err();
    assert!(err.to_string().contains("sparse"), "{err}");
    let mut t = T::default();
    t.pax(&[("GNU.sparse.major", b"1")]).file("sparse2", b"");
    assert!(matches!(
        env.apply(&[t.finish()]).unwrap_err(),
        Error::Unsupported { .. }
    ));
}

/// A layer bigger than the target filesystem ends with a "full" error.
#[test]
fn full_filesystem_is_an_error() {
    let env = new_env();
    let c = CString::new(env.root.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid strings.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m,nr_inodes=64".as_ptr().cast(),
        )
    };
    if r != 0 {
        eprintln!(
            "skipped: cannot mount tmpfs: {}",
            io::Error::last_os_error()
        );
        return;
    }
    struct Umount(CString);
    impl Drop for Umount {
        fn drop(&mut self) {
            // SAFETY: valid string.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _u = Umount(c);
    let mut t = T::default();
    t.file("big", &vec![0u8; 4 << 20]);
    let err = env.apply(&[t.finish()]).unwrap_err();
    assert!(
        matches!(err, Error::NoSpace { ref path } if path == "big"),
        "{err}"
    );
    // Inodes run out too.
    let mut t = T::default();
    for i in 0..200 {
        t.file(&format!("f{i}"), b"");
    }
    fs::remove_file(env.p("big")).unwrap();
    let err = env.apply(&[t.finish()]).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
}

/// A reader that returns one byte per call.
struct Trickle<'a>(&'a [u8]);

impl io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn byte_at_a_time_streams() {
    let mut t = T::default();
    t.dir("d/")
        .file("d/f", &vec![3u8; 5000])
        .symlink("d/l", "f");
    let plain = t.finish();
    for blob in [plain.clone(), gzip(&plain), zstd(&plain)] {
        let env = new_env();
        let mut u = env.unpacker();
        let s = u.apply_layer(Trickle(&blob)).unwrap();
        assert_eq!(fs::read(env.p("d/f")).unwrap(), vec![3u8; 5000]);
        assert_eq!(s.compressed_bytes, blob.len() as u64);
    }
}

/// Several blobs back to back on one stream (as the agent receives them
/// over vsock), each read through `take(size)`.
#[test]
fn layers_back_to_back_on_one_stream() {
    let env = new_env();
    let mut l1 = T::default();
    l1.file("a", b"1").file("b", b"2");
    let mut l2 = T::default();
    l2.file(".wh.a", b"").file("c", b"3");
    let mut l3 = T::default();
    l3.file("d", b"4");
    // Trailing bytes after the end-of-archive blocks belong to the blob.
    let mut l1 = l1.finish();
    l1.extend_from_slice(&[0u8; 4096]);
    let blobs = [l1, gzip(&l2.finish()), zstd(&l3.finish())];
    let stream: Vec<u8> = blobs.concat();
    let mut r = &stream[..];
    let mut u = env.unpacker();
    for b in &blobs {
        let s = u.apply_layer((&mut r).take(b.len() as u64)).unwrap();
        assert_eq!(s.compressed_bytes, b.len() as u64);
    }
    assert!(r.is_empty());
    assert!(!exists(&env.p("a")));
    assert_eq!(fs::read(env.p("d")).unwrap(), b"4");
    assert_eq!(u.stats().layers, 3);
    assert_eq!(u.stats().whiteouts, 1);
}

#[test]
fn symlink_loops_and_links_to_links() {
    let env = new_env();
    let mut t = T::default();
    t.symlink("a", "b").symlink("b", "a");
    t.file("a/x", b"loop");
    let err = env.apply(&[t.finish()]).unwrap_err();
    assert!(err.to_string().contains("a/x"), "{err}");
    env.assert_outside_untouched();
    // A hard link to a symlink links the symlink itself; a directory
    // entry replaces a symlink to a directory.
    let env = new_env();
    let mut t = T::default();
    t.dir("real/")
        .file("real/f", b"f")
        .symlink("s", "real")
        .hardlink("h", "s");
    t.dir("s/").file("s/own", b"own");
    env.apply(&[t.finish()]).unwrap();
    assert!(lmeta(&env.p("h")).file_type().is_symlink());
    assert!(lmeta(&env.p("s")).is_dir());
    assert!(!exists(&env.p("real/own")));
    assert_eq!(fs::read(env.p("s/own")).unwrap(), b"own");
}

#[test]
fn files_larger_than_the_buffer() {
    let env = new_env();
    let big: Vec<u8> = (0..(DEFAULT_BUFFER * 3 + 777))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut t = T::default();
    t.file("big", &big).file("after", b"after");
    let s = env.apply(&[t.finish()]).unwrap();
    assert_eq!(fs::read(env.p("big")).unwrap(), big);
    assert_eq!(fs::read(env.p("after")).unwrap(), b"after");
    assert_eq!(s.data_bytes, big.len() as u64 + 5);
}

/// Random corruptions of a layer with every entry kind: errors are fine,
/// panics, hangs and writes outside the target are not.
/// A xorshift64 generator (deterministic test randomness).
pub(super) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// `base` with 1 to 4 random bytes changed (mostly to `0`, `/`, `.`),
/// header checksums usually fixed so the damage reaches the unpacker,
/// and one time in three truncated.
pub(super) fn mutate(base: &[u8], rnd: &mut impl FnMut() -> u64) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..1 + rnd() % 4 {
        let pos = (rnd() % m.len() as u64) as usize;
        m[pos] = match rnd() % 4 {
            0 => 0,
            1 => b'/',
            2 => b'.',
            _ => rnd() as u8,
        };
        // Mostly keep headers valid, so the mutation reaches the
        // unpacker rather than the checksum test.
        let blk = pos / 512 * 512;
        if !rnd().is_multiple_of(4) && blk + 512 <= m.len() && &m[blk + 257..blk + 262] == b"ustar"
        {
            let b = &mut m[blk..blk + 512];
            b[148..156].copy_from_slice(b"        ");
            let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
            b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
    }
    if rnd().is_multiple_of(3) {
        m.truncate((rnd() % m.len() as u64) as usize);
    }
    m
}

#[test]
fn mutated_layers_never_escape_or_panic() {
    let outside_abs = "/tmp/../tmp/hull-unpack-never";
    let mut t = T::default();
    t.dir("d/")
        .file("d/f", &[9u8; 700])
        .symlink("d/up", "../../..");
    t.symlink("abs", outside_abs).file("abs/x", b"x");
    t.hardlink("d/h", "d/f").file("d/up/y", b"y");
    t.pax(&[("path", b"d/long"), ("SCHILY.xattr.user.a", b"b")])
        .file("p", b"p");
    t.gnu_long(b'L', "d/gnu").file("g", b"g");
    t.entry(H::new("d/fifo", b'6'), b"")
        .file("d/.wh.f", b"")
        .file("d/.wh..wh..opq", b"");
    let base = t.finish();
    let mut rnd = xorshift(0x1234_5678_9abc_def1);
    let env = new_env();
    for i in 0..400 {
        let m = mutate(&base, &mut rnd);
        let root = env.root.join(format!("r{i}"));
        fs::create_dir(&root).unwrap();
        let mut u = Unpacker::new(&root, Options::default()).unwrap();
        let _ = u.apply_layer(&m[..]);
        let _ = u.apply_layer(&gzip(&m)[..]);
    }
    assert!(!Path::new("/tmp/hull-unpack-never").exists());
    env.assert_outside_untouched();
}
