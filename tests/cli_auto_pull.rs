//! `run`/`create` of an image the store lacks pull it first, as Docker
//! does: from a local docker-registry (hull pushed the image there), with Docker's
//! lines on stderr and the container's output alone on stdout; an
//! unreachable registry is one clear error and exit 125. The running
//! container then shows in `ps` as "Up N seconds" and `inspect -f`.

mod common;
mod common_images;

use std::path::Path;
use std::process::Output;

use common::{hull, import_busybox, require_kvm, text};
use common_images::Registry;

fn out(root: &Path, args: &[&str]) -> Output {
    hull(root).args(args).output().unwrap()
}

/// A registry holding the busybox test image as `bb:v1` and `bb:v2`,
/// pushed there by hull from another root.
fn registry(dir: &Path) -> Registry {
    let reg = Registry::start(None);
    let seed = dir.join("seed");
    import_busybox(&seed);
    for tag in ["v1", "v2"] {
        let name = format!("{}/bb:{tag}", reg.addr);
        for args in [&["tag", "busybox:test", &name][..], &["push", &name][..]] {
            let o = out(&seed, args);
            assert!(o.status.success(), "{args:?}: {:?}", text(&o));
        }
    }
    reg
}

#[test]
fn an_unreachable_registry_is_one_error_and_exit_125() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // Port 1 on loopback: nothing listens, the connection is refused.
    let o = out(root, &["run", "--rm", "127.0.0.1:1/app:v1", "true"]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert_eq!(stdout, "");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0],
        "Unable to find image '127.0.0.1:1/app:v1' locally"
    );
    assert!(
        lines[1].starts_with("hull: Unable to pull 127.0.0.1:1/app:v1"),
        "{stderr}"
    );
    for hint in [
        "'hull load'",
        "'hull import'",
        "'hull pull'",
        "cannot reach",
    ] {
        assert!(lines[1].contains(hint), "{hint}: {stderr}");
    }
    // `create` the same; with `--pull never` only the store is asked.
    let o = out(root, &["create", "127.0.0.1:1/app:v1"]);
    assert_eq!(o.status.code(), Some(125));
    let o = out(root, &["run", "--pull", "never", "127.0.0.1:1/app:v1"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(text(&o).1, "hull: No such image: 127.0.0.1:1/app:v1\n");
    // Nothing was left behind.
    assert_eq!(text(&out(root, &["ps", "-aq"])).0, "");
}

#[test]
fn run_pulls_a_missing_image_then_runs_it() {
    require_kvm();
    let t = tempfile::tempdir().unwrap();
    let reg = registry(t.path());
    let root = t.path().join("root");
    let image = format!("{}/bb:v1", reg.addr);

    let o = out(&root, &["run", "--rm", &image, "echo", "pulled"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stdout, "pulled\n", "pull lines stay off stdout");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines[0], format!("Unable to find image '{image}' locally"));
    assert!(lines[1].starts_with("Digest: sha256:"), "{stderr}");
    assert_eq!(
        lines[2],
        format!("Status: Downloaded newer image for {image}")
    );
    assert!(text(&out(
        &root,
        &["images", "--format", "{{.Repository}}:{{.Tag}}"]
    ))
    .0
    .contains(&image));

    // Present now: a detached run pulls nothing.
    let o = out(
        &root,
        &["run", "-d", "--name", "up", &image, "sleep", "120"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("Unable to find"), "{stderr}");
    assert_eq!(stdout.trim().len(), 64);
    let status = text(&out(&root, &["ps", "--format", "{{.Names}} {{.Status}}"])).0;
    assert!(status.starts_with("up Up "), "{status}");
    assert!(status.trim_end().ends_with("second") || status.trim_end().ends_with("seconds"));
    let pid = text(&out(&root, &["inspect", "-f", "{{.State.Pid}}", "up"])).0;
    assert!(pid.trim().parse::<u32>().unwrap() > 0, "{pid}");
    assert_eq!(
        text(&out(
            &root,
            &[
                "inspect",
                "-f",
                "{{.State.Running}} {{.Config.Image}}",
                "up"
            ]
        ))
        .0,
        format!("true {image}\n")
    );
    // Its VMM's memory in stats, against the guest's 256 MiB.
    let stats = text(&out(
        &root,
        &[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.MemUsage}} {{.PIDs}}",
        ],
    ))
    .0;
    let fields: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(
        (fields[0], fields[2], fields[3]),
        ("up", "/", "256.0MiB"),
        "{stats}"
    );
    let rss: f64 = fields[1].trim_end_matches("MiB").parse().unwrap();
    assert!(
        rss > 1.0 && fields[4].parse::<u32>().unwrap() > 1,
        "{stats}"
    );
    assert!(out(&root, &["rm", "-f", "up"]).status.success());

    // `create -q` pulls silently; `--pull always` asks the registry again.
    let v2 = format!("{}/bb:v2", reg.addr);
    let o = out(&root, &["create", "-q", &v2, "true"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).1, "");
    let o = out(&root, &["create", "--pull", "always", &v2]);
    let stderr = text(&o).1;
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("Unable to find"), "{stderr}");
    assert!(
        stderr.contains(&format!("Status: Image is up to date for {v2}")),
        "{stderr}"
    );
}
