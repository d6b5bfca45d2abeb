//! `hull debug dockerfile`: the Dockerfile frontend end to end through the
//! CLI, on the host only (no VM): the seed's example, a multi-stage build
//! with build args and a target, `.dockerignore`, and bad Dockerfiles
//! failing with exit code 125 and one `hull: Dockerfile:LINE: ...` line.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{hull, text};
use serde_json::{json, Value};

const SEED: &str = "FROM python:3.7\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\nCOPY . .\nCMD [\"python\", \"app.py\"]\n";

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
ARG PY=3.7
FROM python:${PY} AS build
ARG VERSION=dev
ENV APP_HOME=/src
WORKDIR $APP_HOME
COPY requirements.txt .
RUN pip wheel -w /wheels -r requirements.txt

FROM alpine AS docs
RUN echo never built

FROM python:${PY}-slim
LABEL org.opencontainers.image.version=$VERSION
COPY --from=build /wheels /wheels
RUN pip install /wheels/*
COPY app.py /app/
EXPOSE 5000
USER 1000:1000
CMD ["python", "/app/app.py"]
"#;

fn debug_dockerfile(root: &Path, args: &[&str]) -> Output {
    hull(root)
        .args(["debug", "dockerfile"])
        .args(args)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Asserts exit code 125 and exactly one line on stderr, `line`.
fn assert_fails_with(out: &Output, line: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(125),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stderr, format!("{line}\n"), "stdout: {stdout}");
}

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

#[test]
fn the_seed_example_resolves_to_one_stage() {
    let root = tempfile::tempdir().unwrap();
    let ctx = context(&[
        ("Dockerfile", SEED),
        ("requirements.txt", "Flask\n"),
        ("app.py", "print('hi')\n"),
        (".dockerignore", "*.pyc\n__pycache__\n"),
        ("cache.pyc", ""),
        ("__pycache__/app.cpython-37.pyc", ""),
    ]);
    let v = json_of(&debug_dockerfile(
        root.path(),
        &[ctx.path().to_str().unwrap()],
    ));
    assert_eq!(v["target"], 0);
    assert_eq!(v["order"], json!([0]));
    let stage = &v["stages"][0];
    assert_eq!(
        stage["base"],
        json!({"type": "image", "reference": "python:3.7"})
    );
    assert_eq!(
        stage["steps"],
        json!([
            {"line": 2, "kind": "WORKDIR", "path": "/app"},
            {"line": 3, "kind": "COPY", "sources": ["requirements.txt"], "dest": "."},
            {"line": 4, "kind": "RUN", "command": {"shell": "pip install -r requirements.txt"}},
            {"line": 5, "kind": "COPY", "sources": ["."], "dest": "."},
            {"line": 6, "kind": "CMD", "command": {"exec": ["python", "app.py"]}},
        ])
    );
    assert_eq!(
        v["context"],
        json!([".dockerignore", "Dockerfile", "app.py", "requirements.txt"])
    );
}

#[test]
fn a_multi_stage_build_with_args_and_a_target() {
    let root = tempfile::tempdir().unwrap();
    let ctx = context(&[("Dockerfile", MULTI_STAGE)]);
    let file = ctx.path().join("Dockerfile");
    let file = file.to_str().unwrap();

    let v = json_of(&debug_dockerfile(
        root.path(),
        &[
            "-f",
            file,
            "--build-arg",
            "VERSION=1.2",
            "--build-arg",
            "PY=3.11",
            "--build-arg",
            "NOBODY=x",
        ],
    ));
    // The docs stage is not needed by the last stage, so not built.
    assert_eq!(v["order"], json!([0, 2]));
    assert_eq!(v["target"], 2);
    assert_eq!(v["unused_build_args"], json!(["NOBODY"]));
    let build = &v["stages"][0];
    assert_eq!(build["name"], "build");
    assert_eq!(build["base"]["reference"], "python:3.11");
    assert_eq!(
        build["steps"][2],
        json!({"line": 6, "kind": "WORKDIR", "path": "/src"})
    );
    assert_eq!(
        build["steps"][4]["build_args"],
        json!({"VERSION": "1.2"}),
        "RUN sees the ARG, not the ENV (in the config)"
    );
    let last = &v["stages"][1];
    assert_eq!(last["index"], 2);
    assert_eq!(last["base"]["reference"], "python:3.11-slim");
    assert_eq!(
        last["steps"][0]["pairs"],
        json!([{"key": "org.opencontainers.image.version", "value": ""}])
    );
    assert_eq!(
        last["steps"][1]["copy_from"],
        json!({"type": "stage", "index": 0})
    );
    assert_eq!(
        last["steps"][4],
        json!({"line": 18, "kind": "EXPOSE", "ports": ["5000"]})
    );

    let v = json_of(&debug_dockerfile(
        root.path(),
        &["-f", file, "--target", "build"],
    ));
    assert_eq!(v["order"], json!([0]));
    assert_eq!(v["stages"][0]["base"]["reference"], "python:3.7");

    let v = json_of(&debug_dockerfile(
        root.path(),
        &["-f", file, "--target", "docs"],
    ));
    assert_eq!(v["order"], json!([1]));
}

#[test]
fn the_dockerfile_can_come_from_stdin() {
    let root = tempfile::tempdir().unwrap();
    let mut child = hull(root.path())
        .args(["debug", "dockerfile", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM scratch\nCOPY <<EOF /hello\nhi\nEOF\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = json_of(&out);
    assert_eq!(v["stages"][0]["base"], json!({"type": "scratch"}));
    assert_eq!(v["stages"][0]["steps"][0]["heredocs"][0]["content"], "hi\n");
}

#[test]
fn bad_dockerfiles_fail_with_125_and_the_line() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        ("FROM a\nFOO bar\n", "hull: Dockerfile:2: unknown instruction: FOO"),
        ("FROM a\n\nCOPY onlyone\n", "hull: Dockerfile:3: COPY requires at least two arguments, but only one was provided. Destination could not be determined."),
        ("FROM a\nSHELL /bin/sh\n", "hull: Dockerfile:2: SHELL requires the arguments to be in JSON form"),
        ("FROM a\nCOPY --nope=1 a b\n", "hull: Dockerfile:2: unknown flag: nope"),
        ("FROM a\nARG X\nWORKDIR ${X\n", "hull: Dockerfile:3: failed to process \"${X\": syntax error: missing '}'"),
        ("FROM a AS one\nCOPY --from=two / /\nFROM b AS two\nCOPY --from=one / /\n", "hull: Dockerfile:4: circular dependency detected on stage: one"),
        ("RUN x\n", "hull: Dockerfile:1: no build stage in current context"),
    ];
    for (dockerfile, line) in cases {
        let ctx = context(&[("Dockerfile", dockerfile)]);
        let out = debug_dockerfile(root.path(), &[ctx.path().to_str().unwrap()]);
        assert_fails_with(&out, line);
    }
    let ctx = context(&[("Dockerfile", "FROM a AS one\n")]);
    let out = debug_dockerfile(
        root.path(),
        &["--target", "two", ctx.path().to_str().unwrap()],
    );
    assert_fails_with(
        &out,
        "hull: Dockerfile:1: target stage \"two\" could not be found",
    );
    let out = debug_dockerfile(root.path(), &["-f", "/nonexistent/Dockerfile"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr.starts_with("hull: cannot read /nonexistent/Dockerfile"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
