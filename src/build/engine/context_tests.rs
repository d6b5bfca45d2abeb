use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::build::ignore::{walk, DockerIgnore};

/// A context: `a.txt` (0640), `dir/b.txt`, `dir/sub/c.txt`, `link -> a.txt`,
/// `x1.py`, `x2.py`, and `.dockerignore` leaving out `secret`.
fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("a.txt"), "A").unwrap();
    std::fs::set_permissions(p.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir_all(p.join("dir/sub")).unwrap();
    std::fs::write(p.join("dir/b.txt"), "BB").unwrap();
    std::fs::write(p.join("dir/sub/c.txt"), "CCC").unwrap();
    std::os::unix::fs::symlink("a.txt", p.join("link")).unwrap();
    std::fs::write(p.join("x1.py"), "1").unwrap();
    std::fs::write(p.join("x2.py"), "2").unwrap();
    std::fs::write(p.join("secret"), "no").unwrap();
    std::fs::write(p.join(".dockerignore"), "secret\n").unwrap();
    dir
}

fn spec<'a>(sources: &'a [String], dest: &'a str) -> CopySpec<'a> {
    CopySpec {
        sources,
        heredocs: &[],
        dest,
        workdir: "/app",
        chown: None,
        chmod: None,
        extract_archives: false,
        remote: &[],
    }
}

/// (path, type, mode, uid, gid, content or link target) of an entry.
type Entry = (String, char, u32, u64, u64, String);

/// The entries of the layer `spec` makes, or the error.
fn copy(ctx: &Path, spec: &CopySpec<'_>) -> Result<Vec<Entry>, CopyError> {
    copy_walked(ctx, &context_entries(ctx), spec)
}

fn context_entries(ctx: &Path) -> Vec<ContextEntry> {
    walk(ctx, &DockerIgnore::read(ctx).unwrap()).unwrap()
}

fn copy_walked(
    ctx: &Path,
    entries: &[ContextEntry],
    spec: &CopySpec<'_>,
) -> Result<Vec<Entry>, CopyError> {
    let mut out = Vec::new();
    write_copy_layer(ctx, entries, spec, &mut out)?;
    Ok(entries_of(&out))
}

fn entries_of(out: &[u8]) -> Vec<Entry> {
    let mut ar = tar::Archive::new(out);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let body = match e.link_name().unwrap() {
                Some(l) => l.to_string_lossy().into_owned(),
                None => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            };
            let kind = match h.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                _ => 'f',
            };
            (
                path,
                kind,
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                body,
            )
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_file_to_a_relative_dir_keeps_its_mode_and_gets_root() {
    let ctx = context();
    let src = strings(&["a.txt"]);
    let got = copy(ctx.path(), &spec(&src, ".")).unwrap();
    assert_eq!(got, [("app/a.txt".into(), 'f', 0o640, 0, 0, "A".into())]);
    let got = copy(ctx.path(), &spec(&src, "/etc/renamed")).unwrap();
    assert_eq!(got[0].0, "etc/renamed");
}

#[test]
fn a_directory_copies_its_contents_in_walk_order() {
    let ctx = context();
    let src = strings(&["dir"]);
    let got = copy(ctx.path(), &spec(&src, "/dst/")).unwrap();
    let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["dst/b.txt", "dst/sub/", "dst/sub/c.txt"]);
}

#[test]
fn the_whole_context_leaves_out_what_dockerignore_excludes() {
    let ctx = context();
    let src = strings(&["."]);
    let got = copy(ctx.path(), &spec(&src, ".")).unwrap();
    let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert!(names.contains(&"app/dir/sub/c.txt"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("secret")), "{names:?}");
    let link = got.iter().find(|e| e.0 == "app/link").unwrap();
    assert_eq!((link.1, link.5.as_str()), ('l', "a.txt"));
}

#[test]
fn wildcards_and_several_sources_need_a_directory() {
    let ctx = context();
    let src = strings(&["x*.py"]);
    let got = copy(ctx.path(), &spec(&src, "/py/")).unwrap();
    let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["py/x1.py", "py/x2.py"]);
    assert!(matches!(
        copy(ctx.path(), &spec(&src, "/py")),
        Err(CopyError::DestNotDir)
    ));
    let two = strings(&["a.txt", "x1.py"]);
    assert!(matches!(
        copy(ctx.path(), &spec(&two, "/f")),
        Err(CopyError::DestNotDir)
    ));
}

#[test]
fn missing_excluded_and_outside_sources_are_errors() {
    let ctx = context();
    for (source, want) in [
        ("nope", "not found"),
        ("secret", "not found"),
        ("nope*", "not found"),
        ("../etc/passwd", "outside"),
        ("dir/../../x", "outside"),
    ] {
        let src = strings(&[source]);
        let err = copy(ctx.path(), &spec(&src, "/")).unwrap_err().to_string();
        assert!(err.contains(want), "{source}: {err}");
    }
}

#[test]
fn chown_and_chmod_apply_to_every_entry() {
    let ctx = context();
    let src = strings(&["dir"]);
    let mut s = spec(&src, "/d/");
    s.chown = Some("1000:50");
    s.chmod = Some("750");
    let got = copy(ctx.path(), &s).unwrap();
    assert!(
        got.iter().all(|e| (e.2, e.3, e.4) == (0o750, 1000, 50)),
        "{got:?}"
    );
    s.chown = Some("7");
    let got = copy(ctx.path(), &s).unwrap();
    assert_eq!((got[0].3, got[0].4), (7, 7));
    s.chown = Some("app");
    assert!(matches!(copy(ctx.path(), &s), Err(CopyError::ChownName(_))));
    s.chown = None;
    s.chmod = Some("9");
    assert!(matches!(copy(ctx.path(), &s), Err(CopyError::Chmod(_))));
}

#[test]
fn add_extracts_a_local_tar_under_the_destination() {
    let ctx = context();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o600);
    h.set_uid(5);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "inner/f", &b"hi"[..]).unwrap();
    std::fs::write(
        ctx.path().join("t.tgz"),
        b.into_inner().unwrap().finish().unwrap(),
    )
    .unwrap();
    let src = strings(&["t.tgz"]);
    let mut s = spec(&src, "/opt/");
    s.extract_archives = true;
    let got = copy(ctx.path(), &s).unwrap();
    assert_eq!(got, [("opt/inner/f".into(), 'f', 0o600, 5, 0, "hi".into())]);
    s.extract_archives = false;
    assert_eq!(copy(ctx.path(), &s).unwrap()[0].0, "opt/t.tgz");
}

#[test]
fn heredocs_are_inline_files_and_urls_are_refused() {
    let ctx = context();
    let heredocs = [Heredoc {
        name: "EOF".into(),
        content: "hello\n".into(),
        expand: true,
        chomp: false,
        fd: 0,
    }];
    let none: Vec<String> = Vec::new();
    let mut s = spec(&none, "/etc/motd");
    s.heredocs = &heredocs;
    let got = copy(ctx.path(), &s).unwrap();
    assert_eq!(
        got,
        [("etc/motd".into(), 'f', 0o644, 0, 0, "hello\n".into())]
    );
    let url = strings(&["https://example.com/x"]);
    // COPY of a URL; ADD fetches them before (and takes them out of
    // the sources).
    assert!(matches!(
        copy(ctx.path(), &spec(&url, "/")),
        Err(CopyError::Unsupported(_))
    ));
}
