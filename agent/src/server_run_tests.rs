//! `Run` with streams attached ahead (`PREATTACH`), alone and closing a
//! `Batch`; `WriteFile` in place.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use agent::protocol::{ExecSpec, PreAttached, Request, Response, StdioKind};

use super::tests::agent;
use super::Agent;

fn sh(script: &str) -> ExecSpec {
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: "/".into(),
        root: None,
        user: String::new(),
        tty: None,
    }
}

/// Attaches `kind` of `key` the way the host does; the host's end, after
/// the agent's answer line.
fn preattach(a: &Agent, key: u64, kind: &str) -> (UnixStream, String) {
    let (mut host, guest) = UnixStream::pair().unwrap();
    host.write_all(format!("PREATTACH {key} {kind}\n").as_bytes())
        .unwrap();
    a.serve_attach(guest);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while host.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    (host, String::from_utf8(line).unwrap())
}

fn streams(key: u64, kinds: &[StdioKind]) -> PreAttached {
    PreAttached {
        key,
        kinds: kinds.to_vec(),
    }
}

#[test]
fn a_batch_ending_in_run_starts_the_process_on_streams_attached_ahead() {
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("set-up");
    // The streams arrive while the batch is being worked through, as the
    // host sends them after the batch.
    let late = {
        let a = a.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (out, ok_out) = preattach(&a, 41, "stdout");
            let (err, ok_err) = preattach(&a, 41, "stderr");
            let (inp, ok_in) = preattach(&a, 41, "stdin");
            assert_eq!([ok_out, ok_err, ok_in], ["OK", "OK", "OK"]);
            (out, err, inp)
        })
    };
    let batch = Request::Batch(vec![
        Request::Mkdir {
            path: marker.to_string_lossy().into_owned(),
            within: None,
        },
        Request::Run {
            spec: sh("read line; echo \"out $line\"; echo err >&2; exit 5"),
            streams: streams(
                41,
                &[StdioKind::Stdout, StdioKind::Stderr, StdioKind::Stdin],
            ),
        },
    ]);
    let id = match a.handle(batch) {
        Response::Running { id, pid } => {
            assert!(pid > 0);
            id
        }
        other => panic!("{other:?}"),
    };
    assert!(marker.is_dir(), "the batch's set-up ran first");
    let (mut out, mut err, mut inp) = late.join().unwrap();
    inp.write_all(b"hi\n").unwrap();
    drop(inp);
    assert_eq!(
        a.handle(Request::Wait { id }),
        Response::Exited {
            code: 5,
            signal: None
        }
    );
    let (mut o, mut e) = (String::new(), String::new());
    out.read_to_string(&mut o).unwrap();
    err.read_to_string(&mut e).unwrap();
    assert_eq!((o.as_str(), e.as_str()), ("out hi\n", "err\n"));
}

#[test]
fn a_run_without_its_streams_or_with_the_wrong_ones_fails_clearly() {
    let a: Arc<Agent> = agent();
    // Only stdout came: the error names what is missing (after the wait).
    let (_out, ok) = preattach(&a, 7, "stdout");
    assert_eq!(ok, "OK");
    let (_dup, refused) = preattach(&a, 7, "stdout");
    assert!(refused.starts_with("ERR"), "{refused}");
    let short = a.preattached.take(
        7,
        &[StdioKind::Stdout, StdioKind::Stderr],
        std::time::Duration::from_millis(10),
    );
    assert_eq!(short.unwrap_err(), "streams not attached: stderr");
    // A terminal process has exactly one tty stream, others none.
    let mut tty = sh("true");
    tty.tty = Some(Default::default());
    for (spec, kinds) in [
        (tty, vec![StdioKind::Stdout, StdioKind::Stderr]),
        (sh("true"), vec![StdioKind::Tty]),
    ] {
        match a.handle(Request::Run {
            spec,
            streams: streams(8, &kinds),
        }) {
            Response::Error { message } => assert!(message.contains("tty"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
    // A program that cannot run: the Docker-style failure, no process left.
    let (_o, _) = preattach(&a, 9, "stdout");
    let (_e, _) = preattach(&a, 9, "stderr");
    let mut missing = sh("true");
    missing.argv = vec!["/no/such/program".into()];
    match a.handle(Request::Run {
        spec: missing,
        streams: streams(9, &[StdioKind::Stdout, StdioKind::Stderr]),
    }) {
        Response::StartFailed { message, .. } => assert!(message.contains("no such"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(a.procs().is_empty());
}

#[test]
fn a_file_written_in_place_keeps_its_inode_and_refuses_symlinks() {
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("files/etc/hosts");
    let write = |content: &str, path: &std::path::Path| {
        a.handle(Request::WriteFile {
            path: path.to_string_lossy().into_owned(),
            content: content.into(),
            mode: 0o644,
            within: None,
            in_place: true,
        })
    };
    assert_eq!(write("first, and longer\n", &own), Response::Ok);
    // A hard link stands for the bind mount a warm snapshot made of it.
    let seen = dir.path().join("seen");
    std::fs::hard_link(&own, &seen).unwrap();
    assert_eq!(write("second\n", &own), Response::Ok);
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "second\n");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&seen, &link).unwrap();
    assert!(matches!(write("x", &link), Response::Error { .. }));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "second\n");
    // In place is for the agent's own paths only.
    let inside = a.handle(Request::WriteFile {
        path: own.to_string_lossy().into_owned(),
        content: "x".into(),
        mode: 0o644,
        within: Some(dir.path().to_string_lossy().into_owned()),
        in_place: true,
    });
    assert!(matches!(inside, Response::Error { .. }), "{inside:?}");
}

#[test]
fn a_thread_done_with_its_connection_serves_the_next() {
    let idle = Arc::new(super::Idle::default());
    let (first, _) = UnixStream::pair().unwrap();
    assert!(idle.hand_over(first).is_some(), "no thread waits yet");
    let waiter = {
        let idle = idle.clone();
        std::thread::spawn(move || idle.wait_for_next().map(|mut s| s.write_all(b"served")))
    };
    let (conn, mut peer) = UnixStream::pair().unwrap();
    let mut conn = Some(conn);
    // The waiter registers itself shortly; until then the conn comes back.
    for _ in 0..200 {
        match idle.hand_over(conn.take().unwrap()) {
            None => break,
            Some(back) => {
                conn = Some(back);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    assert!(conn.is_none(), "no waiting thread took the connection");
    waiter.join().unwrap().unwrap().unwrap();
    let mut got = String::new();
    peer.read_to_string(&mut got).unwrap();
    assert_eq!(got, "served");
}
