//! Resolution tests: Docker's ARG/ENV scoping examples, where
//! substitution applies, stages, targets and their errors.

use super::*;
use crate::build::dockerfile::Command;
use crate::build::Heredoc;

fn opts(args: &[(&str, &str)], target: Option<&str>) -> BuildOptions {
    BuildOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(String::from),
        platform: images::platform::Platform {
            os: "linux".into(),
            arch: "arm64".into(),
            variant: Some("v8".into()),
        },
    }
}

fn no_env(_: &str) -> Vars {
    Vars::new()
}

fn build_with(src: &str, args: &[(&str, &str)], target: Option<&str>) -> Build {
    let d = Dockerfile::parse(src).unwrap_or_else(|e| panic!("{}", e.report()));
    d.resolve(&opts(args, target), &no_env)
        .unwrap_or_else(|e| panic!("{src:?}: {}", e.report()))
}

fn build(src: &str, args: &[(&str, &str)]) -> Build {
    build_with(src, args, None)
}

fn resolve_err(src: &str, args: &[(&str, &str)], target: Option<&str>) -> (usize, String) {
    let d = Dockerfile::parse(src).unwrap_or_else(|e| panic!("{}", e.report()));
    match d.resolve(&opts(args, target), &no_env) {
        Ok(b) => panic!("{src:?} resolved: {b:?}"),
        Err(e) => (e.line, e.report()),
    }
}

/// The target stage's instructions.
fn target_steps(b: &Build) -> Vec<Instruction> {
    let target = b.stage(b.target).expect("target resolved");
    target.steps.iter().map(|s| s.instruction.clone()).collect()
}

fn users(b: &Build) -> Vec<String> {
    target_steps(b)
        .into_iter()
        .filter_map(|i| match i {
            Instruction::User { user } => Some(user),
            _ => None,
        })
        .collect()
}

fn workdirs(b: &Build) -> Vec<String> {
    target_steps(b)
        .into_iter()
        .filter_map(|i| match i {
            Instruction::Workdir { path } => Some(path),
            _ => None,
        })
        .collect()
}

fn env_of(b: &Build) -> Vec<(String, String)> {
    b.stage(b.target)
        .expect("target")
        .env
        .pairs()
        .iter()
        .filter(|(k, _)| k != "PATH")
        .cloned()
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn an_arg_is_usable_from_its_declaration_on() {
    // Docker's reference, "Scope".
    let src = "FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\n";
    let b = build(src, &[("username", "what_user")]);
    assert_eq!(users(&b), ["some_user", "what_user"]);
    // Without the build arg the ARG has no value: unset.
    let b = build(src, &[]);
    assert_eq!(users(&b), ["some_user", ""]);
}

#[test]
fn an_arg_ends_with_its_stage() {
    let src = "FROM busybox AS one\nARG SETTINGS=x\nUSER a$SETTINGS\nFROM one\nUSER b$SETTINGS\n";
    let b = build(src, &[]);
    assert_eq!(users(&b), ["b"]);
    assert_eq!(b.order, [0, 1]);
}

#[test]
fn env_wins_over_arg() {
    // Docker's reference, "Using ARG variables".
    let src = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nRUN echo $CONT_IMG_VER\nUSER $CONT_IMG_VER\n";
    let b = build(src, &[("CONT_IMG_VER", "v2.0.1")]);
    assert_eq!(users(&b), ["v1.0.0"]);
    let run = &b.stage(0).unwrap().steps[2];
    assert!(!run.build_args.contains("CONT_IMG_VER"), "{run:?}");
    // BuildKit: an ARG after an ENV of the same name wins from there on
    // (for substitution and RUN), while the config keeps the ENV.
    let src = "FROM ubuntu\nENV V=env\nARG V=arg\nUSER $V\nRUN x\nENV V=again\nUSER $V\nRUN y\n";
    let b = build(src, &[("V", "given")]);
    assert_eq!(users(&b), ["given", "again"]);
    let stage = b.stage(0).unwrap();
    assert_eq!(stage.steps[3].build_args.get("V"), Some("given"));
    assert_eq!(stage.steps[6].build_args.get("V"), None);
    assert_eq!(stage.env.get("V"), Some("again"));
}

#[test]
fn env_from_an_arg_with_a_default() {
    // Docker's reference: ENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}.
    let src = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}\n";
    assert_eq!(
        env_of(&build(src, &[])),
        pairs(&[("CONT_IMG_VER", "v1.0.0")])
    );
    assert_eq!(
        env_of(&build(src, &[("CONT_IMG_VER", "v2.0.1")])),
        pairs(&[("CONT_IMG_VER", "v2.0.1")])
    );
}

#[test]
fn env_pairs_of_one_instruction_see_the_env_before_it() {
    // Docker's reference, "Environment replacement".
    let src = "FROM a\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n";
    assert_eq!(
        env_of(&build(src, &[])),
        pairs(&[("abc", "bye"), ("def", "hello"), ("ghi", "bye")])
    );
}

#[test]
fn substitution_applies_where_docker_applies_it() {
    // Docker's reference, "Environment replacement".
    let src = "FROM busybox\nENV FOO=/bar\nWORKDIR ${FOO}\nADD . $FOO\nCOPY \\$FOO /quux\n";
    let steps = target_steps(&build(src, &[]));
    assert_eq!(
        steps[1],
        Instruction::Workdir {
            path: "/bar".into()
        }
    );
    let Instruction::Add(add) = &steps[2] else {
        panic!()
    };
    assert_eq!(
        (add.sources.as_slice(), add.dest.as_str()),
        (&[".".to_string()][..], "/bar")
    );
    let Instruction::Copy(copy) = &steps[3] else {
        panic!()
    };
    assert_eq!(
        (copy.sources.as_slice(), copy.dest.as_str()),
        (&["$FOO".to_string()][..], "/quux")
    );

    let src = "FROM a\nARG U=app P=8080 SIG=TERM D=/data\nENV N=name\n\
               USER $U:$U\nEXPOSE $P ${P}/udp\nSTOPSIGNAL SIG$SIG\nVOLUME $D [\"x\"]\nVOLUME [\"$D\"]\n\
               LABEL $N=\"${U} label\"\nCOPY --chown=$U --chmod=${M:-644} --from=${F:-x} s$N /d$N\n\
               RUN echo $U\nCMD echo $U\nENTRYPOINT [\"$U\"]\nSHELL [\"$U\"]\nHEALTHCHECK CMD $U\nONBUILD RUN $U\n";
    let steps = target_steps(&build(src, &[]));
    let want = [
        "USER app:app",
        "EXPOSE 8080 8080/udp",
        "STOPSIGNAL SIGTERM",
        "VOLUME [\"/data\",\"[x]\"]",
        "VOLUME [\"/data\"]",
        "LABEL name=app label",
        "COPY --from=x --chown=app --chmod=644 [\"sname\",\"/dname\"]",
        "RUN echo $U",
        "CMD echo $U",
        "ENTRYPOINT [\"$U\"]",
        "SHELL [\"$U\"]",
        "HEALTHCHECK CMD $U",
        "ONBUILD RUN $U",
    ];
    let got: Vec<String> = steps[2..].iter().map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn quotes_are_removed_by_substitution() {
    let src = "FROM a\nENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog MY_CAT='fluffy $x'\nENV OLD \"legacy value\"\n";
    assert_eq!(
        env_of(&build(src, &[])),
        pairs(&[
            ("MY_NAME", "John Doe"),
            ("MY_DOG", "Rex The Dog"),
            ("MY_CAT", "fluffy $x"),
            ("OLD", "legacy value")
        ])
    );
}

#[test]
fn meta_args_serve_from_lines_and_bare_redeclarations() {
    // Docker's reference, "Understand how ARG and FROM interact".
    let src = "ARG VERSION=latest\nFROM busybox:$VERSION\nARG VERSION\nRUN echo $VERSION > image_version\n";
    let b = build(src, &[]);
    let stage = b.stage(0).unwrap();
    assert_eq!(
        stage.base,
        Base::Image {
            reference: "busybox:latest".into()
        }
    );
    assert_eq!(stage.steps[1].build_args.get("VERSION"), Some("latest"));
    let b = build(src, &[("VERSION", "1.36")]);
    assert_eq!(
        b.stage(0).unwrap().base,
        Base::Image {
            reference: "busybox:1.36".into()
        }
    );

    // Not redeclared: not visible in the stage.
    let src = "ARG CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nUSER u$CODE_VERSION\n";
    assert_eq!(users(&build(src, &[])), ["u"]);

    // A meta default sees earlier meta args; a build arg only if declared.
    let src = "ARG A=a\nARG B=${A}b\nFROM img:$B$C\n";
    let b = build(src, &[("C", "c")]);
    assert_eq!(
        b.stage(0).unwrap().base,
        Base::Image {
            reference: "img:ab".into()
        }
    );
    assert_eq!(b.unused_build_args, ["C"]);
}

#[test]
fn platform_args_are_meta_args() {
    let src = "FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETOS TARGETARCH\nWORKDIR /$TARGETOS/$TARGETARCH/$TARGETVARIANT\nFROM alpine:$TARGETARCH\nWORKDIR /$TARGETARCH\n";
    let b = build(src, &[]);
    assert_eq!(b.order, [1]);
    assert_eq!(
        b.stage(1).unwrap().base,
        Base::Image {
            reference: "alpine:arm64".into()
        }
    );
    assert_eq!(workdirs(&b), ["/"]);
    let b = build_with(src, &[], Some("build"));
    assert_eq!(
        b.stage(0).unwrap().platform.as_deref(),
        Some("linux/arm64/v8")
    );
    assert_eq!(workdirs(&b), ["/linux/arm64/"]);
}

#[test]
fn run_steps_get_args_and_proxies_but_not_unset_ones() {
    let src = "FROM a\nARG A=1 B\nARG C=$A$A\nRUN x\n";
    let b = build(
        src,
        &[("HTTP_PROXY", "http://p:3128"), ("no_proxy", "local")],
    );
    let run = &b.stage(0).unwrap().steps[2];
    assert_eq!(
        run.build_args.pairs(),
        pairs(&[
            ("A", "1"),
            ("C", "11"),
            ("HTTP_PROXY", "http://p:3128"),
            ("no_proxy", "local")
        ])
    );
    // Proxy args need no ARG, so they are never "unused".
    assert!(b.unused_build_args.is_empty());
}

#[test]
fn base_image_env_is_the_stage_env() {
    let src = "FROM img\nWORKDIR $HOME\nARG HOME=/arg\nWORKDIR $HOME\nENV X=$PATH\n";
    let d = Dockerfile::parse(src).unwrap();
    let image_env = |reference: &str| -> Vars {
        assert_eq!(reference, "img");
        [
            ("HOME".to_string(), "/root".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]
        .into_iter()
        .collect()
    };
    let b = d.resolve(&opts(&[], None), &image_env).unwrap();
    assert_eq!(workdirs(&b), ["/root", "/arg"]);
    assert_eq!(b.stage(0).unwrap().env.get("X"), Some("/bin"));
    assert_eq!(b.stage(0).unwrap().env.get("HOME"), Some("/root"));
    // Without a PATH in the base, Docker's default one.
    let b = build("FROM scratch\nENV X=$PATH\n", &[]);
    assert_eq!(b.stage(0).unwrap().env.get("X"), Some(DEFAULT_PATH));
}

#[test]
fn a_stage_inherits_its_base_stages_env() {
    let src = "FROM a AS base\nENV APP=/srv\nFROM base\nWORKDIR $APP\n";
    let b = build(src, &[]);
    assert_eq!(b.stage(1).unwrap().base, Base::Stage { index: 0 });
    assert_eq!(workdirs(&b), ["/srv"]);
}

#[test]
fn targets_select_the_stages_to_build() {
    let src = "FROM golang AS build\nRUN make\n\
               FROM alpine AS test\nCOPY --from=build /out /out\nRUN test\n\
               FROM build AS unused\nRUN nothing\n\
               FROM scratch AS final\nCOPY --from=build /out /app\nCOPY --from=0 /x /y\n";
    let b = build(src, &[]);
    assert_eq!(b.target, 3);
    assert_eq!(b.order, [0, 3]);
    let final_stage = b.stage(3).unwrap();
    assert_eq!(final_stage.base, Base::Scratch);
    assert_eq!(
        final_stage.steps[0].copy_from,
        Some(Base::Stage { index: 0 })
    );
    assert!(b.stage(2).is_none());
    let b = build_with(src, &[], Some("TEST"));
    assert_eq!((b.target, b.order.as_slice()), (1, &[0, 1][..]));
    let b = build_with(src, &[], Some("unused"));
    assert_eq!(b.order, [0, 2]);
    assert_eq!(b.stage(2).unwrap().base, Base::Stage { index: 0 });
}

#[test]
fn copy_from_resolves_names_indexes_and_images() {
    // A variable in --from: the meta args only (the links between stages
    // are settled before any stage's own ARGs exist).
    let src = "ARG S=one\nFROM a AS one\nFROM b\nCOPY --from=one /a /a\nCOPY --from=0 /b /b\nCOPY --from=nginx:latest /c /c\nCOPY --from=$S /e /e\n";
    let b = build(src, &[]);
    let from: Vec<_> = b
        .stage(1)
        .unwrap()
        .steps
        .iter()
        .filter_map(|s| s.copy_from.clone())
        .collect();
    assert_eq!(
        from,
        [
            Base::Stage { index: 0 },
            Base::Stage { index: 0 },
            Base::Image {
                reference: "nginx:latest".into()
            },
            Base::Stage { index: 0 },
        ]
    );
}

#[test]
fn copy_from_a_later_stage_is_allowed_unless_it_is_a_cycle() {
    let src = "FROM a AS first\nCOPY --from=second /x /x\nFROM b AS second\nRUN x\n";
    let b = build_with(src, &[], Some("first"));
    assert_eq!(b.order, [1, 0]);
    let cases: &[(&str, usize, &str)] = &[
        (
            "FROM a AS first\nCOPY --from=second /x /x\nFROM b AS second\nCOPY --from=first /y /y\n",
            4,
            "circular dependency detected on stage: first",
        ),
        ("FROM a AS self\nCOPY --from=self /x /x\n", 2, "circular dependency detected on stage: self"),
        ("FROM a\nCOPY --from=0 /x /x\n", 2, "circular dependency detected on stage: stage-0"),
        ("FROM a AS x\nRUN --mount=type=bind,from=x,target=/m true\n", 2, "circular dependency detected on stage: x"),
    ];
    for (src, line, needle) in cases {
        let (got_line, message) = resolve_err(src, &[], None);
        assert!(message.contains(needle), "{src:?}: {message}");
        assert_eq!(got_line, *line, "{src:?}: {message}");
    }
}

#[test]
fn run_mounts_from_stages_are_dependencies() {
    let src = "FROM a AS deps\nRUN fetch\nFROM b AS other\nFROM c\nRUN --mount=type=bind,from=deps,target=/d build\nRUN --mount=type=cache,target=/c x\n";
    assert_eq!(build(src, &[]).order, [0, 2]);
}

#[test]
fn a_later_stage_name_in_from_is_an_image() {
    let src = "FROM later\nFROM a AS later\n";
    let (line, message) = resolve_err(src, &[], Some("nosuch"));
    assert_eq!(
        (line, message.as_str()),
        (
            2,
            "Dockerfile:2: target stage \"nosuch\" could not be found"
        )
    );
    let d = Dockerfile::parse(src).unwrap();
    let b = d.resolve(&opts(&[], None), &no_env).unwrap();
    assert_eq!(b.order, [1]);
    assert_eq!(
        b.stage(1).unwrap().base,
        Base::Image {
            reference: "a".into()
        }
    );
    let first =
        Dockerfile::parse("FROM later\nFROM a AS later\nFROM x\nCOPY --from=0 / /\n").unwrap();
    let b = first.resolve(&opts(&[], None), &no_env).unwrap();
    assert_eq!(
        b.stage(0).unwrap().base,
        Base::Image {
            reference: "later".into()
        }
    );
}

#[test]
fn bad_substitutions_fail_only_in_stages_that_are_built() {
    let src = "FROM a AS broken\nWORKDIR ${X\nFROM b AS fine\nWORKDIR /ok\n";
    let b = build_with(src, &[], Some("fine"));
    assert_eq!(b.order, [1]);
    let (line, message) = resolve_err(src, &[], Some("broken"));
    assert_eq!(line, 2);
    assert_eq!(
        message,
        "Dockerfile:2: failed to process \"${X\": syntax error: missing '}'"
    );
}

#[test]
fn resolution_errors_name_the_line() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], usize, &'a str);
    let cases: &[Case] = &[
        (
            "FROM a\nWORKDIR ${X\n",
            &[],
            2,
            "failed to process \"${X\": syntax error: missing '}'",
        ),
        (
            "FROM a\nUSER ${}\n",
            &[],
            2,
            "syntax error: bad substitution",
        ),
        ("FROM a\nENV A=\"${B:?need B}\"\n", &[], 2, "B: need B"),
        (
            "FROM a\nLABEL a=\"open\n",
            &[],
            2,
            "looking for matching double-quote",
        ),
        (
            "FROM a\nCOPY ${A:1} b\n",
            &[],
            2,
            "unsupported modifier (:1) in substitution",
        ),
        ("ARG X=${\nFROM a\n", &[], 1, "failed to process \"${\""),
        (
            "FROM $NOPE\n",
            &[],
            1,
            "base name ($NOPE) should not be blank",
        ),
        (
            "ARG IMG\nFROM ${IMG}\n",
            &[],
            2,
            "base name (${IMG}) should not be blank",
        ),
        ("FROM UPPER\n", &[], 1, "invalid reference format"),
        (
            "FROM a\nCOPY --from=BAD /x /y\n",
            &[],
            2,
            "invalid reference format",
        ),
        (
            "FROM a\nCOPY --from=7 /x /y\n",
            &[],
            2,
            "invalid stage index 7: the Dockerfile has 1 stages",
        ),
        (
            "FROM a\nARG S=x\nCOPY --from=$S /x /y\n",
            &[],
            3,
            "invalid reference format",
        ),
        // Links are checked in stages that are not built, too.
        (
            "FROM a\nCOPY --from=9 /x /y\nFROM b\n",
            &[],
            2,
            "invalid stage index 9",
        ),
        (
            "FROM a AS x\nCOPY --from=y / /\nFROM b AS y\nCOPY --from=x / /\nFROM c\n",
            &[],
            4,
            "circular dependency detected on stage: x",
        ),
        (
            "FROM a\nEXPOSE 80/ipx\n",
            &[],
            2,
            "invalid containerPort: 80/ipx",
        ),
        (
            "FROM a\nEXPOSE http\n",
            &[],
            2,
            "invalid containerPort: http",
        ),
        (
            "FROM a\nARG P=70000\nEXPOSE $P\n",
            &[],
            3,
            "invalid containerPort: 70000",
        ),
        (
            "FROM a\nEXPOSE 90-80\n",
            &[],
            2,
            "invalid containerPort: 90-80",
        ),
        (
            "FROM a\nARG V\nVOLUME $V\n",
            &[],
            3,
            "VOLUME specified can not be an empty string",
        ),
    ];
    for (src, args, line, needle) in cases {
        let (got_line, message) = resolve_err(src, args, None);
        assert!(message.contains(needle), "{src:?}: {message}");
        assert!(
            message.starts_with(&format!("Dockerfile:{line}: ")),
            "{src:?}: {message}"
        );
        assert_eq!(got_line, *line, "{src:?}");
    }
}

#[test]
fn expose_accepts_docker_port_specs() {
    let src =
        "FROM a\nARG PORTS=\"80 443\"\nEXPOSE 8080-8090/tcp 53/UDP 9/sctp $PORTS \"$PORTS\"\n";
    let src = src.replace(" \"$PORTS\"", "");
    let steps = target_steps(&build(&src, &[]));
    assert_eq!(
        steps[1],
        Instruction::Expose {
            ports: ["8080-8090/tcp", "53/UDP", "9/sctp", "80", "443"]
                .map(String::from)
                .to_vec()
        }
    );
}

#[test]
fn copy_heredocs_expand_unless_the_delimiter_is_quoted() {
    let src = "FROM a\nARG V=value\nCOPY <<EOF <<'RAW' /dst/\nv=$V \"q\" \\$V\nEOF\nv=$V\nRAW\n";
    let steps = target_steps(&build(src, &[]));
    let Instruction::Copy(copy) = &steps[1] else {
        panic!("{steps:?}")
    };
    let bodies: Vec<&Heredoc> = copy.heredocs.iter().collect();
    assert_eq!(bodies[0].content, "v=value \"q\" $V\n");
    assert_eq!(bodies[1].content, "v=$V\n");
}

#[test]
fn run_heredocs_are_left_to_the_shell() {
    let src = "FROM a\nARG V=x\nRUN <<EOF\necho $V\nEOF\n";
    let steps = target_steps(&build(src, &[]));
    let Instruction::Run {
        command, heredocs, ..
    } = &steps[1]
    else {
        panic!()
    };
    assert_eq!(command, &Command::Shell("<<EOF".into()));
    assert_eq!(heredocs[0].content, "echo $V\n");
}

#[test]
fn unused_build_args_are_reported_sorted() {
    let src = "ARG META\nFROM a AS one\nARG USED\nFROM b\nARG OTHER\n";
    let b = build(
        src,
        &[
            ("ZED", "1"),
            ("USED", "1"),
            ("META", "1"),
            ("OTHER", "1"),
            ("ALPHA", "2"),
        ],
    );
    // ARGs of stages that are not built do not consume anything.
    assert_eq!(b.unused_build_args, ["ALPHA", "USED", "ZED"]);
}

#[test]
fn a_later_build_arg_wins() {
    let b = build("FROM a\nARG A\nUSER $A\n", &[("A", "1"), ("A", "2")]);
    assert_eq!(users(&b), ["2"]);
}

#[test]
fn args_of_one_instruction_see_each_other() {
    let b = build("FROM a\nARG A=1 B=${A}2\nUSER $B\n", &[]);
    assert_eq!(users(&b), ["12"]);
}

#[test]
fn escape_directive_applies_to_substitution() {
    let b = build("# escape=`\nFROM a\nARG D=dir\nWORKDIR c:\\$D\\`$D\n", &[]);
    assert_eq!(workdirs(&b), ["c:\\dir\\$D"]);
}

#[test]
fn the_build_serializes_for_the_debug_command() {
    let b = build(
        "FROM python:3.7\nWORKDIR /app\nCMD [\"python\", \"app.py\"]\n",
        &[],
    );
    let v = serde_json::to_value(&b).unwrap();
    assert_eq!(
        v["stages"][0]["base"],
        serde_json::json!({"type": "image", "reference": "python:3.7"})
    );
    assert_eq!(
        v["stages"][0]["steps"][0],
        serde_json::json!({"line": 2, "kind": "WORKDIR", "path": "/app"})
    );
    assert_eq!(
        v["stages"][0]["steps"][1],
        serde_json::json!({"line": 3, "kind": "CMD", "command": {"exec": ["python", "app.py"]}})
    );
    assert_eq!(v["meta_args"]["TARGETPLATFORM"], "linux/arm64/v8");
}
