//! Docker's output formats as scripts use them: `ps`/`images` with Go
//! templates, `table ...` and `json`; `inspect -f`; `ps` columns, `-n`,
//! `-l`, `--no-trunc`, `--filter` with and without `-q`. Containers are
//! made with `hull create` (no VM): formats need containers, not guests.

mod common;

use std::path::Path;
use std::process::Output;

use common::{hull, import_busybox, text};

fn ok(root: &Path, args: &[&str]) -> String {
    let out = hull(root).args(args).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert!(stderr.is_empty(), "{args:?}: stderr {stderr:?}");
    stdout
}

fn fails(root: &Path, args: &[&str]) -> Output {
    let out = hull(root).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {:?}", text(&out));
    let (stdout, stderr) = text(&out);
    assert!(stdout.is_empty(), "{stdout:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("hull: "), "{stderr:?}");
    out
}

/// A root with busybox:test and three created containers, oldest first:
/// `web` (labels tier=front, app=shop), `db` (tier=back) and `job`.
fn setup() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);
    let mut ids = Vec::new();
    for args in [
        &[
            "--name",
            "web",
            "-l",
            "tier=front",
            "-l",
            "app=shop",
            "-e",
            "A=1",
        ][..],
        &["--name", "db", "--label", "tier=back"][..],
        &["--name", "job"][..],
    ] {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        all.extend([
            "busybox:test",
            "sh",
            "-c",
            "while true; do date; sleep 5; done",
        ]);
        let id = ok(root, &all).trim().to_string();
        assert_eq!(id.len(), 64, "{id}");
        ids.push(id);
        // Distinct creation times order `ps` (newest first).
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (dir, ids)
}

#[test]
fn ps_formats_columns_and_filters() {
    let (dir, ids) = setup();
    let root = dir.path();
    // Created containers are not running: plain `ps` lists none.
    assert_eq!(ok(root, &["ps"]).lines().count(), 1);
    let table = ok(root, &["ps", "-a"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "CONTAINER",
            "ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES"
        ]
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[1].starts_with(&ids[2][..12]), "newest first: {table}");
    assert!(lines[1].contains("\"sh -c while true; d…\""), "{table}");
    // "Less than a second ago", "1 second ago", "2 seconds ago".
    assert!(
        lines[1].contains(" second ago") || lines[1].contains(" seconds ago"),
        "{table}"
    );
    assert!(lines[1].contains("Created"), "{table}");
    assert!(lines[1].ends_with("job"), "{table}");
    // Columns line up under their titles.
    let col = lines[0].find("NAMES").unwrap();
    assert!(lines.iter().skip(1).all(|l| l.len() > col), "{table}");

    assert_eq!(
        ok(root, &["ps", "-a", "--format", "{{.Names}}\\t{{.Status}}"]),
        "job\tCreated\ndb\tCreated\nweb\tCreated\n"
    );
    assert_eq!(ok(root, &["ps", "-aq"]).lines().count(), 3);
    assert_eq!(
        ok(root, &["ps", "-a", "--format", "{{.ID}}"]),
        ok(root, &["ps", "-aq"])
    );
    assert_eq!(
        ok(
            root,
            &["ps", "-a", "--format", "table {{.ID}}\\t{{.Names}}"]
        ),
        format!(
            "CONTAINER ID   NAMES\n{}   job\n{}   db\n{}   web\n",
            &ids[2][..12],
            &ids[1][..12],
            &ids[0][..12]
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(ok(root, &["ps", "-l", "--format", "json"]).trim()).unwrap();
    assert_eq!(json["Names"], "job");
    assert_eq!(json["State"], "created");
    assert_eq!(json["Image"], "busybox:test");
    assert!(json["CreatedAt"].as_str().unwrap().ends_with(" +0000 UTC"));
    assert_eq!(
        ok(root, &["ps", "-a", "--format", "{{json .Names}}"]),
        "\"job\"\n\"db\"\n\"web\"\n"
    );
    assert_eq!(
        ok(
            root,
            &[
                "ps",
                "-a",
                "--format",
                "{{.Names}}: {{.Labels}}",
                "--filter",
                "label=tier"
            ]
        ),
        "db: tier=back\nweb: app=shop,tier=front\n"
    );

    // -n, -l, --no-trunc.
    assert_eq!(
        ok(root, &["ps", "-n", "2", "--format", "{{.Names}}"]),
        "job\ndb\n"
    );
    assert_eq!(
        ok(root, &["ps", "-l", "-q"]),
        format!("{}\n", &ids[2][..12])
    );
    assert_eq!(
        ok(
            root,
            &["ps", "-a", "--no-trunc", "-q", "--filter", "name=web"]
        ),
        format!("{}\n", ids[0])
    );
    assert_eq!(
        ok(
            root,
            &["ps", "-l", "--no-trunc", "--format", "{{.Command}}"]
        ),
        "\"sh -c while true; do date; sleep 5; done\"\n"
    );

    // Filters, alone and with -q; a status filter needs no -a.
    let names = |filters: &[&str]| {
        let mut args = vec!["ps", "-a", "--format", "{{.Names}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        ok(root, &args)
    };
    assert_eq!(names(&["label=tier=back"]), "db\n");
    assert_eq!(names(&["label=tier", "name=w"]), "web\n");
    assert_eq!(names(&["ancestor=busybox:test"]).lines().count(), 3);
    assert_eq!(names(&["ancestor=busybox:other"]), "");
    assert_eq!(names(&[&format!("id={}", &ids[1][..6])]), "db\n");
    assert_eq!(
        ok(root, &["ps", "--filter", "status=created", "-q"])
            .lines()
            .count(),
        3
    );
    assert_eq!(ok(root, &["ps", "--filter", "status=exited", "-q"]), "");
    assert_eq!(
        ok(root, &["ps", "-q", "--filter", "label=app=shop"]),
        "",
        "without -a only running containers"
    );

    // Bad input: one line, exit 1 (as `docker ps`).
    let out = fails(root, &["ps", "--filter", "colour=red"]);
    assert!(text(&out).1.contains("colour=red"));
    let out = fails(root, &["ps", "-a", "--format", "{{.Nmes}}"]);
    assert!(text(&out).1.contains("can't evaluate field Nmes"));
    fails(root, &["ps", "--format", "{{.Names"]);
}

#[test]
fn inspect_and_images_templates() {
    let (dir, _) = setup();
    let root = dir.path();
    let f = |template: &str, target: &str| ok(root, &["inspect", "-f", template, target]);
    assert_eq!(f("{{.State.Pid}}", "web"), "0\n");
    assert_eq!(
        f("{{.State.Status}} {{.State.ExitCode}}", "web"),
        "created 0\n"
    );
    assert_eq!(f("{{.Name}}", "web"), "/web\n");
    let env = f("{{.Config.Env}}", "web");
    assert!(
        env.starts_with("[PATH=") && env.ends_with(" GREETING=hi A=1]\n"),
        "{env}"
    );
    let env = f("{{range .Config.Env}}{{.}} {{end}}", "web");
    assert!(env.ends_with("GREETING=hi A=1 \n"), "{env}");
    assert_eq!(f(r#"{{index .Config.Labels "tier"}}"#, "web"), "front\n");
    assert_eq!(f(r#"{{index .Config.Labels "none"}}"#, "web"), "\n");
    assert_eq!(
        f("{{json .Config.Labels}}", "web"),
        "{\"app\":\"shop\",\"tier\":\"front\"}\n"
    );
    assert_eq!(
        f(
            "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}} {{end}}",
            "web"
        ),
        "app=shop tier=front \n"
    );
    assert_eq!(
        f(
            "{{if .State.Running}}up{{else}}down{{end}} {{.Config.Cmd | len}}",
            "web"
        ),
        "down 3\n"
    );
    // Several targets: a line each; `json` is `{{json .}}`.
    assert_eq!(
        ok(root, &["inspect", "-f", "{{.Name}}", "web", "db"]),
        "/web\n/db\n"
    );
    let one: serde_json::Value =
        serde_json::from_str(ok(root, &["inspect", "--format", "json", "db"]).trim()).unwrap();
    assert_eq!(one["Name"], "/db");
    // The whole document, with Docker's zero values instead of nulls.
    let doc: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", "db"])).unwrap();
    assert_eq!(doc[0]["State"]["ExitCode"], 0);
    assert_eq!(doc[0]["State"]["Error"], "");
    assert_eq!(doc[0]["State"]["StartedAt"], "0001-01-01T00:00:00Z");
    fails(root, &["inspect", "-f", "{{.State.Pid", "web"]);
    // `inspect` of a name no container has looks for an image, as Docker's.
    assert_eq!(f("{{.RootFS.Type}}", "busybox:test"), "layers\n");
    let out = fails(root, &["inspect", "ghost"]);
    assert_eq!(text(&out).1, "hull: No such container: ghost\n");

    // Images.
    let id = ok(root, &["images", "-q"]);
    assert_eq!(
        ok(
            root,
            &["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]
        ),
        format!("busybox:test {id}")
    );
    let table = ok(
        root,
        &["images", "--format", "table {{.Repository}}\\t{{.Tag}}"],
    );
    assert_eq!(table, "REPOSITORY   TAG\nbusybox      test\n");
    let json: serde_json::Value =
        serde_json::from_str(ok(root, &["images", "--format", "json"]).trim()).unwrap();
    assert_eq!(json["Repository"], "busybox");
    assert!(json["CreatedSince"].as_str().unwrap().ends_with(" ago"));
    assert_eq!(
        ok(root, &["images", "--no-trunc", "--format", "{{.ID}}"]).len(),
        "sha256:".len() + 64 + 1
    );
    assert_eq!(
        ok(
            root,
            &[
                "image",
                "inspect",
                "-f",
                "{{.RootFS.Type}} {{len .RootFS.Layers}}",
                "busybox:test"
            ]
        ),
        "layers 1\n"
    );
    assert_eq!(
        ok(
            root,
            &["image", "inspect", "-f", "{{.Config.Env}}", "busybox:test"]
        ),
        "[GREETING=hi]\n"
    );
}
