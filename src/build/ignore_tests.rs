//! `.dockerignore` tests: Docker's reference examples, the pattern
//! syntax, and walks of real directories.

use super::*;

fn ignore(text: &str) -> DockerIgnore {
    DockerIgnore::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Asserts which of `paths` `text` excludes.
fn check(text: &str, excluded: &[&str], included: &[&str]) {
    let ig = ignore(text);
    for path in excluded {
        assert!(ig.is_excluded(path), "{text:?} should exclude {path:?}");
    }
    for path in included {
        assert!(!ig.is_excluded(path), "{text:?} should include {path:?}");
    }
}

#[test]
fn the_reference_example() {
    let text = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
    check(
        text,
        &[
            "somedir/temporary.txt",
            "somedir/temp",
            "somedir/temp/inside",
            "somedir/subdir/temporary.txt",
            "tempa",
            "tempb",
        ],
        &["temporary.txt", "temp", "tempab", "a/b/c/temp", "# comment"],
    );
}

#[test]
fn double_star_matches_any_number_of_directories() {
    check(
        "**/*.go\n",
        &["main.go", "a/main.go", "a/b/c/x.go"],
        &["main.rs", "a/go", "a/main.gox"],
    );
    check(
        "**/foo\n",
        &["foo", "a/foo", "a/b/foo", "foo/bar"],
        &["afoo", "a/bfoo"],
    );
    check(
        "foo/**/bar\n",
        &["foo/bar", "foo/x/bar", "foo/x/y/bar/z"],
        &["bar", "foo/xbar"],
    );
    check("a/**\n", &["a/x", "a/x/y"], &["a", "ab"]);
    check("**\n", &["a", "a/b", ".dockerignore", "Dockerfile"], &[]);
}

#[test]
fn single_star_and_question_stay_in_one_component() {
    check("*.md\n", &["README.md", "docs.md/x"], &["docs/README.md"]);
    check("a*b\n", &["ab", "axxb"], &["a/b", "ax/yb"]);
    check("?\n", &["a", "b/c"], &["ab"]);
}

#[test]
fn character_classes_and_escapes() {
    check("[a-c].txt\n", &["a.txt", "c.txt"], &["d.txt", "ab.txt"]);
    check("[^a-c].txt\n", &["d.txt"], &["a.txt"]);
    check("\\*.txt\n", &["*.txt"], &["a.txt"]);
    check("a\\?\n", &["a?"], &["ab"]);
    check("[\\]]\n", &["]"], &["a"]);
    // A lone `]` is an ordinary character.
    check("a]\n", &["a]"], &["a"]);
}

#[test]
fn exceptions_and_the_last_matching_line() {
    // Docker's reference: all markdown files but README.md.
    check("*.md\n!README.md\n", &["CHANGES.md"], &["README.md"]);
    // Docker's reference: the placement of exceptions.
    check(
        "*.md\n!README*.md\nREADME-secret.md\n",
        &["README-secret.md", "other.md"],
        &["README.md", "README-public.md"],
    );
    check(
        "*.md\nREADME-secret.md\n!README*.md\n",
        &["other.md"],
        &["README-secret.md", "README.md"],
    );
    // Everything but a directory.
    check(
        "*\n!src\n",
        &["target", "Dockerfile", "x/y"],
        &["src", "src/main.rs"],
    );
    // A file re-included inside an excluded directory.
    check(
        "build\n!build/keep\n",
        &["build", "build/drop"],
        &["build/keep", "build/keep/deep"],
    );
    // An exception before the exclusion has no effect.
    check("!a.txt\n*.txt\n", &["a.txt"], &[]);
}

#[test]
fn a_directory_pattern_excludes_what_is_below() {
    check(
        "node_modules\n.git\n",
        &["node_modules", "node_modules/a/b.js", ".git/HEAD"],
        &["src/node_modules", "node_modules_x"],
    );
}

#[test]
fn patterns_are_cleaned_and_relative_to_the_context() {
    check("/foo/bar\n", &["foo/bar", "foo/bar/baz"], &["x/foo/bar"]);
    check("foo/bar\n", &["foo/bar"], &["x/foo/bar"]);
    check("./a\n", &["a"], &[]);
    check("a/../b\n", &["b"], &["a"]);
    check("a//b/\n", &["a/b"], &[]);
    check("  spaced  \n\t\n", &["spaced"], &[]);
    check("! keep \n*\n!keep\n", &["other"], &["keep"]);
    // A comment only in the first column.
    check(" # not a comment\n", &["# not a comment"], &[]);
    // A byte order mark is not part of the first pattern.
    check("\u{feff}first\n", &["first"], &[]);
    // CRLF files.
    check("a\r\nb\r\n", &["a", "b"], &[]);
}

#[test]
fn malformed_patterns_are_errors() {
    for text in ["!\n", "! \n", "[\n", "a[b\n", "a\\\n", "[]\n", "[z-a]\n"] {
        assert!(DockerIgnore::parse(text).is_err(), "{text:?} parsed");
    }
    assert_eq!(
        DockerIgnore::parse("!\n").unwrap_err().to_string(),
        "illegal exclusion pattern: \"!\""
    );
}

#[test]
fn go_clean() {
    let cases = [
        ("", "."),
        (".", "."),
        ("./", "."),
        ("a/./b", "a/b"),
        ("a/../..", ".."),
        ("../a", "../a"),
        ("/..", "/"),
        ("/a/../b/", "/b"),
        ("a//b", "a/b"),
    ];
    for (path, want) in cases {
        assert_eq!(clean(path), want, "{path:?}");
    }
}

fn touch(root: &Path, path: &str) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, path).unwrap();
}

fn walked(root: &Path, text: &str) -> Vec<(String, EntryKind)> {
    walk(root, &ignore(text))
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string_lossy().into_owned(), e.kind))
        .collect()
}

#[test]
fn walks_list_included_entries_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for f in [
        "b.txt",
        "a/z",
        "a/b/c",
        "a.txt",
        "Dockerfile",
        "node_modules/m/x.js",
        "keep/me",
        "keep/not",
    ] {
        touch(root, f);
    }
    std::fs::create_dir(root.join("empty")).unwrap();
    // A symlink out of the context is listed, not followed.
    std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
    let got = walked(root, "node_modules\nkeep\n!keep/me\n");
    let want: Vec<(String, EntryKind)> = [
        ("Dockerfile", EntryKind::File),
        ("a", EntryKind::Dir),
        ("a/b", EntryKind::Dir),
        ("a/b/c", EntryKind::File),
        ("a/z", EntryKind::File),
        ("a.txt", EntryKind::File),
        ("b.txt", EntryKind::File),
        ("empty", EntryKind::Dir),
        ("keep", EntryKind::Dir),
        ("keep/me", EntryKind::File),
        ("link", EntryKind::Symlink),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k))
    .collect();
    assert_eq!(got, want);

    // No .dockerignore: everything, the Dockerfile too.
    assert!(DockerIgnore::read(root).unwrap().is_empty());
    assert_eq!(walked(root, "").len(), 15);

    // The Dockerfile and .dockerignore can be excluded like any file.
    touch(root, ".dockerignore");
    let got = walked(root, "Dockerfile\n.dockerignore\n*/*\n!a\n");
    let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "a",
            "a/b",
            "a/b/c",
            "a/z",
            "a.txt",
            "b.txt",
            "empty",
            "keep",
            "link",
            "node_modules"
        ]
    );
}

#[test]
fn excluded_directories_are_walked_only_when_an_exception_may_reach_inside() {
    let ig = ignore("*\n!src\n!docs/*.md\n!**/keep\n");
    for dir in ["src", "docs", "node_modules", "a/b"] {
        // `**/keep` could be anywhere.
        assert!(ig.may_reinclude_below(dir), "{dir}");
    }
    let ig = ignore("*\n!src\n!docs/*.md\n!lib/x\n");
    let walked = ["docs", "src", "lib"];
    let skipped = ["node_modules", "srcx", "doc", "lib2", "target/debug"];
    for dir in walked {
        assert!(ig.may_reinclude_below(dir), "{dir}");
    }
    for dir in skipped {
        assert!(!ig.may_reinclude_below(dir), "{dir}");
    }
    // A literal exception naming a parent re-includes what is below.
    let ig = ignore("a/b\n!a\n");
    assert!(ig.may_reinclude_below("a/b"));
    assert!(!ignore("node_modules\n").may_reinclude_below("node_modules"));
}

#[test]
fn reading_a_context_without_dockerignore_gives_no_patterns() {
    let dir = tempfile::tempdir().unwrap();
    assert!(DockerIgnore::read(dir.path()).unwrap().is_empty());
    std::fs::write(dir.path().join(".dockerignore"), "x\n").unwrap();
    assert!(DockerIgnore::read(dir.path()).unwrap().is_excluded("x"));
}
