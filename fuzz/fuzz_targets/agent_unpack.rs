//! Fuzzes the agent's unpacker onto a real directory, as the container
//! mode's host unpack, `hull cp` into a container and volume filling use
//! it: the input is a layer blob (plain, gzip or zstd) applied to a fresh
//! directory in /dev/shm next to a canary directory. Nothing may panic,
//! and nothing may be created, changed or removed outside the target.
//!
//! Runs only as an unprivileged user (a defect here must not be able to
//! reach the host's files): `sudo -u nobody`, see docs/measurements.md.

#![no_main]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use agent::unpack::{Options, Unpacker};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"outside the target\n";

struct Dirs {
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
}

static DIRS: OnceLock<Dirs> = OnceLock::new();

fn dirs() -> &'static Dirs {
    DIRS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_ne!(
            unsafe { libc::geteuid() },
            0,
            "run agent_unpack as an unprivileged user"
        );
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let base = parent.join(format!("hull-fuzz-unpack-{}", std::process::id()));
        let outside = base.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("canary"), CANARY).unwrap();
        // SAFETY: `remove_all` is an `extern "C" fn()` that does not unwind
        // (it catches panics); libFuzzer ends with `exit`, which runs it.
        unsafe { libc::atexit(remove_all) };
        Dirs {
            root: base.join("root"),
            base,
            outside,
        }
    })
}

/// Removes this process's directories when the fuzzer exits.
extern "C" fn remove_all() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(d) = DIRS.get() {
            remove(&d.base);
        }
    });
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Makes every directory under `dir` writable and searchable (layers may
/// make them 000), then removes it.
fn remove(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                remove(&e.path());
            }
        }
        fs::remove_dir(dir).unwrap();
    } else {
        fs::remove_file(dir).unwrap();
    }
}

fuzz_target!(|data: &[u8]| {
    let d = dirs();
    remove(&d.root);
    fs::create_dir(&d.root).unwrap();
    let opts = Options {
        chown: false,
        xattrs: true,
        buffer_size: 8 << 10,
        max_entries: 512,
        id_shift: None,
    };
    let mut u = Unpacker::new(&d.root, opts).unwrap();
    let _ = u.apply_layer_within(data, 1 << 20);

    let base: BTreeSet<String> = ["outside", "root"].map(String::from).into();
    assert_eq!(names(&d.base), base, "an entry escaped the target");
    assert_eq!(
        names(&d.outside),
        ["canary".to_owned()].into(),
        "an entry escaped the target"
    );
    assert_eq!(
        fs::read(d.outside.join("canary")).unwrap(),
        CANARY,
        "the canary was written"
    );
    assert!(
        fs::symlink_metadata(&d.root).unwrap().is_dir(),
        "the target was replaced"
    );
});
