//! `hull events`: what happens to containers, images, volumes and networks
//! is recorded by the hull process that does it and read back, as history
//! (`--since`/`--until`) or followed live, with Docker's filters and
//! formats.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_one_line_error, hull, import_busybox, require_kvm, text};

fn now_arg() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{:?}", text(out));
    text(out).0
}

#[test]
fn every_kind_of_object_is_reported_in_order() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let t0 = now_arg();
    import_busybox(root);

    // A follower started before the containers: it prints their events
    // as they happen.
    let mut follower = hull(root)
        .args(["events", "--since", &t0, "--filter", "type=container"])
        .args(["--format", "{{.Action}} {{.Actor.Attributes.name}}"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, followed) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    for args in [
        &["tag", "busybox:test", "busybox:ev"][..],
        &["rmi", "busybox:ev"],
        &["volume", "create", "ev-data"],
        &["volume", "rm", "ev-data"],
        &["network", "create", "ev-net"],
        &["network", "rm", "ev-net"],
    ] {
        ok(&hull(root).args(args).output().unwrap());
    }
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "--name",
            "ev1",
            "busybox:test",
            "sh",
            "-c",
            "exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    ok(&hull(root)
        .args([
            "run",
            "-d",
            "--name",
            "ev2",
            "busybox:test",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap());
    ok(&hull(root)
        .args(["kill", "-s", "WINCH", "ev2"])
        .output()
        .unwrap());
    ok(&hull(root)
        .args(["stop", "-t", "1", "ev2"])
        .output()
        .unwrap());
    ok(&hull(root).args(["rm", "ev2"]).output().unwrap());
    let t1 = now_arg();

    // History: every kind, in order, as Docker's lines.
    let history = ok(&hull(root)
        .args(["events", "--since", &t0, "--until", &t1])
        .output()
        .unwrap());
    let shape: Vec<String> = history
        .lines()
        .map(|l| {
            // `TIME TYPE ACTION ID (ATTRS)`: keep type and action.
            let f: Vec<&str> = l.split(' ').collect();
            assert!(f[0].ends_with('Z') && f[0].len() == 30, "{l}");
            format!("{} {}", f[1], f[2])
        })
        .collect();
    let want = [
        "image import",
        "image tag",
        "image untag",
        "volume create",
        "volume destroy",
        "network create",
        "network destroy",
        "container create",
        "container start",
        "container die",
        "container destroy",
        "container create",
        "container start",
        "container kill",
        "container kill",
    ];
    assert_eq!(&shape[..want.len()], want, "{history}");
    // SIGTERM then (sleep ignores nothing, but as PID 1 of its namespace
    // it may) SIGKILL: the stop ends with die, stop and the removal.
    let tail: Vec<&str> = shape[want.len()..]
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "container kill")
        .collect();
    assert_eq!(
        tail,
        ["container die", "container stop", "container destroy"],
        "{history}"
    );
    assert!(
        history.contains("container die ")
            && history.contains("exitCode=3, image=busybox:test, name=ev1)"),
        "{history}"
    );
    assert!(history.contains("name=ev2, signal=28)"), "{history}");

    // Filters and formats on the history.
    let ev1 = ok(&hull(root)
        .args(["events", "--since", &t0, "--until", &t1])
        .args(["--filter", "container=ev1", "--filter", "event=die"])
        .args(["--format", "{{.Actor.Attributes.exitCode}}"])
        .output()
        .unwrap());
    assert_eq!(ev1, "3\n");
    let json = ok(&hull(root)
        .args([
            "events",
            "--since",
            &t0,
            "--until",
            &t1,
            "--filter",
            "type=volume",
        ])
        .args(["--format", "json"])
        .output()
        .unwrap());
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["Type"], "volume");
    assert_eq!(first["Action"], "create");
    assert_eq!(first["Actor"]["ID"], "ev-data");
    assert!(first["timeNano"].as_u64().unwrap() > 0);

    // The follower saw the containers' events live, in the same order.
    let mut live = Vec::new();
    while live.len() < 8 {
        match followed.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => live.push(l),
            Err(_) => break,
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(
        live[..6],
        [
            "create ev1",
            "start ev1",
            "die ev1",
            "destroy ev1",
            "create ev2",
            "start ev2"
        ],
        "{live:?}"
    );

    // Bad options: one line, non-zero, nothing followed.
    for (args, needle) in [
        (&["--since", "yesterday"][..], "invalid time \"yesterday\""),
        (&["--filter", "label=x"], "invalid filter \"label=x\""),
        (&["--format", "{{.Action"], "template"),
    ] {
        let out = hull(root).arg("events").args(args).output().unwrap();
        assert_one_line_error(&out, needle);
    }
}
