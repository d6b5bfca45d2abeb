//! Parser tests: every instruction's forms and errors, Docker's reference
//! examples, and printing then parsing again.

use super::*;

fn parse(src: &str) -> Dockerfile {
    match Dockerfile::parse(src) {
        Ok(d) => d,
        Err(e) => panic!("{src:?}: {}", e.report()),
    }
}

/// The instructions of the only stage of `FROM a\n{body}`.
fn steps(body: &str) -> Vec<Instruction> {
    parse(&format!("FROM a\n{body}")).stages[0]
        .steps
        .iter()
        .map(|s| s.instruction.clone())
        .collect()
}

fn one(body: &str) -> Instruction {
    let mut s = steps(body);
    assert_eq!(s.len(), 1, "{body:?}");
    s.remove(0)
}

fn err(src: &str) -> (usize, String) {
    match Dockerfile::parse(src) {
        Ok(d) => panic!("{src:?} parsed: {d:?}"),
        Err(e) => (e.line, e.kind.to_string()),
    }
}

fn shell(s: &str) -> Command {
    Command::Shell(s.into())
}

fn exec(v: &[&str]) -> Command {
    Command::Exec(v.iter().map(|s| s.to_string()).collect())
}

fn kv(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_seed_example_parses() {
    let d = parse(
        "FROM python:3.7\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\nCOPY . .\nCMD [\"python\", \"app.py\"]\n",
    );
    assert_eq!(d.stages.len(), 1);
    let stage = &d.stages[0];
    assert_eq!(
        (stage.base.as_str(), stage.name.as_ref()),
        ("python:3.7", None)
    );
    let lines: Vec<usize> = stage.steps.iter().map(|s| s.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6]);
    assert_eq!(
        stage.steps[4].instruction,
        Instruction::Cmd {
            command: exec(&["python", "app.py"])
        }
    );
}

#[test]
fn commands_take_exec_or_shell_form() {
    let cases: &[(&str, Command)] = &[
        ("RUN echo hi", shell("echo hi")),
        ("RUN [\"echo\", \"hi\"]", exec(&["echo", "hi"])),
        ("RUN   [ \"a\" ]  ", exec(&["a"])),
        ("RUN [\"a\\\"b\"]", exec(&["a\"b"])),
        ("RUN [\"ünï\"]", exec(&["ünï"])),
        // Not valid JSON: shell form, exactly as written.
        ("RUN [\"a\", 'b']", shell("[\"a\", 'b']")),
        ("RUN ['a']", shell("['a']")),
        ("RUN [\"a\"] && b", shell("[\"a\"] && b")),
        ("RUN [\"a\",]", shell("[\"a\",]")),
        ("RUN [ -f x ] && echo", shell("[ -f x ] && echo")),
        // Docker's reference: backslashes must be escaped in JSON, so this
        // is not JSON (`\w` is no JSON escape) and runs in a shell.
        (
            "RUN [\"c:\\windows\\system32\\tasklist.exe\"]",
            shell("[\"c:\\windows\\system32\\tasklist.exe\"]"),
        ),
        (
            "RUN [\"c:\\\\windows\\\\system32\\\\tasklist.exe\"]",
            exec(&["c:\\windows\\system32\\tasklist.exe"]),
        ),
        // Docker's reference: shell form across lines.
        (
            "RUN source $HOME/.bashrc && \\\necho $HOME",
            shell("source $HOME/.bashrc && echo $HOME"),
        ),
        (
            "RUN [\"/bin/bash\", \"-c\", \"echo hello\"]",
            exec(&["/bin/bash", "-c", "echo hello"]),
        ),
        ("run lower case", shell("lower case")),
        ("CMD [\"/bin/sh\"]", exec(&["/bin/sh"])),
        ("CMD echo $HOME", shell("echo $HOME")),
        ("ENTRYPOINT [\"top\", \"-b\"]", exec(&["top", "-b"])),
        ("EnTrYpOiNt exec top -b", shell("exec top -b")),
    ];
    for (body, want) in cases {
        let got = match one(body) {
            Instruction::Run { command, .. }
            | Instruction::Cmd { command }
            | Instruction::Entrypoint { command } => command,
            other => panic!("{body:?}: {other:?}"),
        };
        assert_eq!(&got, want, "{body:?}");
    }
}

#[test]
fn cmd_without_arguments_is_an_empty_shell_command() {
    assert_eq!(one("CMD"), Instruction::Cmd { command: shell("") });
    assert_eq!(one("CMD []"), Instruction::Cmd { command: exec(&[]) });
}

#[test]
fn run_flags_are_recorded() {
    let got = one("RUN --mount=type=cache,target=/root/.cache --network=none --security=insecure pip install x");
    assert_eq!(
        got,
        Instruction::Run {
            command: shell("pip install x"),
            heredocs: vec![],
            mounts: strings(&["type=cache,target=/root/.cache"]),
            network: Some("none".into()),
            security: Some("insecure".into()),
        }
    );
}

#[test]
fn env_and_label_take_both_forms() {
    let cases: &[(&str, Vec<KeyValue>, bool)] = &[
        ("ENV A=1", kv(&[("A", "1")]), false),
        ("ENV A=1 B=2", kv(&[("A", "1"), ("B", "2")]), false),
        ("ENV MY_NAME=\"John Doe\"", kv(&[("MY_NAME", "\"John Doe\"")]), false),
        ("ENV MY_DOG=Rex\\ The\\ Dog", kv(&[("MY_DOG", "Rex\\ The\\ Dog")]), false),
        ("ENV MY_CAT=fluffy", kv(&[("MY_CAT", "fluffy")]), false),
        ("ENV A=", kv(&[("A", "")]), false),
        ("ENV A=a=b", kv(&[("A", "a=b")]), false),
        // The legacy form: the value is the rest of the line.
        ("ENV MY_VAR my-value", kv(&[("MY_VAR", "my-value")]), true),
        ("ENV ONE TWO= THREE=world", kv(&[("ONE", "TWO= THREE=world")]), true),
        ("ENV A   spaced  value", kv(&[("A", "spaced  value")]), true),
        ("LABEL version=\"1.0\"", kv(&[("version", "\"1.0\"")]), false),
        (
            "LABEL \"com.example.vendor\"=\"ACME Incorporated\"",
            kv(&[("\"com.example.vendor\"", "\"ACME Incorporated\"")]),
            false,
        ),
        (
            "LABEL multi.label1=\"value1\" multi.label2=\"value2\" other=\"value3\"",
            kv(&[
                ("multi.label1", "\"value1\""),
                ("multi.label2", "\"value2\""),
                ("other", "\"value3\""),
            ]),
            false,
        ),
        ("LABEL description=\"This text illustrates \\\nthat label-values can span multiple lines.\"",
            kv(&[("description", "\"This text illustrates that label-values can span multiple lines.\"")]),
            false),
        ("LABEL legacy form", kv(&[("legacy", "form")]), true),
    ];
    for (body, want, legacy_want) in cases {
        let (pairs, legacy) = match one(body) {
            Instruction::Env { pairs, legacy } | Instruction::Label { pairs, legacy } => {
                (pairs, legacy)
            }
            other => panic!("{body:?}: {other:?}"),
        };
        assert_eq!((&pairs, legacy), (want, *legacy_want), "{body:?}");
    }
}

#[test]
fn arg_names_and_defaults() {
    type Case<'a> = (&'a str, &'a [(&'a str, Option<&'a str>)]);
    let cases: &[Case] = &[
        ("ARG user1", &[("user1", None)]),
        ("ARG user1=someuser", &[("user1", Some("someuser"))]),
        (
            "ARG buildno=1 user",
            &[("buildno", Some("1")), ("user", None)],
        ),
        ("ARG A=\"x y\"", &[("A", Some("\"x y\""))]),
        ("ARG A=", &[("A", Some(""))]),
        ("ARG A=${B:-c}", &[("A", Some("${B:-c}"))]),
    ];
    for (body, want) in cases {
        let want: Vec<ArgDecl> = want
            .iter()
            .map(|(n, d)| ArgDecl {
                name: n.to_string(),
                default: d.map(String::from),
            })
            .collect();
        assert_eq!(one(body), Instruction::Arg { args: want }, "{body:?}");
    }
}

#[test]
fn simple_instructions_keep_the_rest_of_the_line() {
    let cases: &[(&str, Instruction)] = &[
        (
            "WORKDIR /a/b c",
            Instruction::Workdir {
                path: "/a/b c".into(),
            },
        ),
        (
            "WORKDIR $DIRPATH/$DIRNAME",
            Instruction::Workdir {
                path: "$DIRPATH/$DIRNAME".into(),
            },
        ),
        (
            "USER patrick",
            Instruction::User {
                user: "patrick".into(),
            },
        ),
        (
            "USER 1000:1000",
            Instruction::User {
                user: "1000:1000".into(),
            },
        ),
        (
            "STOPSIGNAL SIGKILL",
            Instruction::Stopsignal {
                signal: "SIGKILL".into(),
            },
        ),
        (
            "MAINTAINER Jane <jane@example.com>",
            Instruction::Maintainer {
                name: "Jane <jane@example.com>".into(),
            },
        ),
        (
            "EXPOSE 80/udp 443",
            Instruction::Expose {
                ports: strings(&["80/udp", "443"]),
            },
        ),
        (
            "VOLUME /myvol",
            Instruction::Volume {
                paths: strings(&["/myvol"]),
            },
        ),
        (
            "VOLUME /a /b",
            Instruction::Volume {
                paths: strings(&["/a", "/b"]),
            },
        ),
        (
            "VOLUME [\"/data\"]",
            Instruction::Volume {
                paths: strings(&["/data"]),
            },
        ),
        (
            "VOLUME [\"/a b\", \"/c\"]",
            Instruction::Volume {
                paths: strings(&["/a b", "/c"]),
            },
        ),
        (
            "SHELL [\"powershell\", \"-command\"]",
            Instruction::Shell {
                shell: strings(&["powershell", "-command"]),
            },
        ),
        (
            "SHELL [\"/bin/bash\", \"-c\"]",
            Instruction::Shell {
                shell: strings(&["/bin/bash", "-c"]),
            },
        ),
        (
            "ONBUILD ADD . /app/src",
            Instruction::Onbuild {
                expression: "ADD . /app/src".into(),
                heredocs: vec![],
            },
        ),
        (
            "onbuild RUN --mount=type=cache,target=/x make",
            Instruction::Onbuild {
                expression: "RUN --mount=type=cache,target=/x make".into(),
                heredocs: vec![],
            },
        ),
    ];
    for (body, want) in cases {
        assert_eq!(&one(body), want, "{body:?}");
    }
}

#[test]
fn copy_and_add_sources_flags_and_forms() {
    let copy = |sources: &[&str], dest: &str| Copy {
        sources: strings(sources),
        dest: dest.into(),
        ..Copy::default()
    };
    let cases: &[(&str, Copy)] = &[
        ("COPY a b", copy(&["a"], "b")),
        ("COPY a b c /d/", copy(&["a", "b", "c"], "/d/")),
        ("COPY hom* /mydir/", copy(&["hom*"], "/mydir/")),
        ("COPY [\"a b\", \"/c d/\"]", copy(&["a b"], "/c d/")),
        (
            "COPY --from=build /out /usr/bin/",
            Copy {
                from: Some("build".into()),
                ..copy(&["/out"], "/usr/bin/")
            },
        ),
        (
            "COPY --from=0 /out /o",
            Copy {
                from: Some("0".into()),
                ..copy(&["/out"], "/o")
            },
        ),
        (
            "COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf",
            Copy {
                from: Some("nginx:latest".into()),
                ..copy(&["/etc/nginx/nginx.conf"], "/nginx.conf")
            },
        ),
        (
            "COPY --chown=55:mygroup files* /somedir/",
            Copy {
                chown: Some("55:mygroup".into()),
                ..copy(&["files*"], "/somedir/")
            },
        ),
        (
            "COPY --chmod=644 a b",
            Copy {
                chmod: Some("644".into()),
                ..copy(&["a"], "b")
            },
        ),
        (
            "COPY --link a b",
            Copy {
                link: true,
                ..copy(&["a"], "b")
            },
        ),
        ("COPY --link=false a b", copy(&["a"], "b")),
        (
            "COPY --link=TRUE a b",
            Copy {
                link: true,
                ..copy(&["a"], "b")
            },
        ),
        (
            "COPY --parents a/b c",
            Copy {
                parents: true,
                ..copy(&["a/b"], "c")
            },
        ),
        (
            "COPY --exclude=*.txt --exclude=*.md . /x",
            Copy {
                exclude: strings(&["*.txt", "*.md"]),
                ..copy(&["."], "/x")
            },
        ),
        (
            "COPY --from=\"a\" b c",
            Copy {
                from: Some("a".into()),
                ..copy(&["b"], "c")
            },
        ),
    ];
    for (body, want) in cases {
        assert_eq!(one(body), Instruction::Copy(want.clone()), "{body:?}");
    }
    assert_eq!(
        one("ADD --chown=1 --checksum=sha256:abc --keep-git-dir https://example.com/x.tar /x/"),
        Instruction::Add(Add {
            sources: strings(&["https://example.com/x.tar"]),
            dest: "/x/".into(),
            chown: Some("1".into()),
            checksum: Some("sha256:abc".into()),
            keep_git_dir: true,
            ..Add::default()
        })
    );
}

#[test]
fn heredocs_on_run_and_copy() {
    let run = one("RUN <<EOF\napt-get update\napt-get install -y vim\nEOF\n");
    let Instruction::Run {
        command, heredocs, ..
    } = run
    else {
        panic!("{run:?}");
    };
    assert_eq!(command, shell("<<EOF"));
    assert_eq!(
        heredocs[0].content,
        "apt-get update\napt-get install -y vim\n"
    );
    assert!(heredocs[0].expand);

    // Docker's reference: a program given as the heredoc's interpreter.
    let run = one(
        "RUN python3 <<EOF\nwith open(\"/hello\", \"w\") as f:\n    print(\"Hello\", file=f)\nEOF",
    );
    let Instruction::Run {
        command, heredocs, ..
    } = run
    else {
        panic!("{run:?}");
    };
    assert_eq!(command, shell("python3 <<EOF"));
    assert_eq!(
        heredocs[0].content,
        "with open(\"/hello\", \"w\") as f:\n    print(\"Hello\", file=f)\n"
    );

    // Several heredocs on one line.
    let run = one(
        "RUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2\n",
    );
    let Instruction::Run { heredocs, .. } = run else {
        panic!("{run:?}");
    };
    let got: Vec<_> = heredocs
        .iter()
        .map(|h| (h.name.as_str(), h.content.as_str()))
        .collect();
    assert_eq!(
        got,
        [("FILE1", "I am\nfirst\n"), ("FILE2", "I am\nsecond\n")]
    );

    // Quoted delimiter: the body is literal.
    let Instruction::Copy(copy) =
        one("COPY <<-\"EOT\" /app/script.sh\n\techo hello ${FOO}\n\tEOT\n")
    else {
        panic!()
    };
    assert_eq!(copy.dest, "/app/script.sh");
    assert!(copy.sources.is_empty());
    assert_eq!(copy.heredocs[0].content, "echo hello ${FOO}\n");
    assert!(!copy.heredocs[0].expand);
    assert!(copy.heredocs[0].chomp);

    // Heredocs and paths as sources together.
    let Instruction::Copy(copy) = one("COPY <<A file <<B /dst/\na\nA\nb\nB\n") else {
        panic!()
    };
    assert_eq!(copy.sources, ["file"]);
    let names: Vec<_> = copy.heredocs.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["A", "B"]);

    // Instructions after a heredoc start on the right line.
    let d = parse("FROM a\nRUN <<EOF\nx\nEOF\nUSER u\n");
    assert_eq!(d.stages[0].steps[1].line, 5);
}

#[test]
fn from_forms() {
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        ("FROM ubuntu", "ubuntu", None, None),
        (
            "FROM ubuntu:22.04 AS Build",
            "ubuntu:22.04",
            Some("build"),
            None,
        ),
        ("from scratch as out", "scratch", Some("out"), None),
        (
            "FROM --platform=$BUILDPLATFORM golang AS b-1.x_y",
            "golang",
            Some("b-1.x_y"),
            Some("$BUILDPLATFORM"),
        ),
        ("FROM ${IMG}:${TAG}", "${IMG}:${TAG}", None, None),
        ("FROM a@sha256:0123", "a@sha256:0123", None, None),
    ];
    for (src, base, name, platform) in cases {
        let d = parse(src);
        let s = &d.stages[0];
        assert_eq!(
            (s.base.as_str(), s.name.as_deref(), s.platform.as_deref()),
            (*base, *name, *platform),
            "{src:?}"
        );
    }
}

#[test]
fn meta_args_come_before_the_first_from() {
    let d = parse("ARG CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nCMD  /code/run-app\n\nFROM extras:${CODE_VERSION}\nCMD  /code/run-extras\n");
    assert_eq!(d.meta_args.len(), 1);
    assert_eq!(d.meta_args[0].line, 1);
    assert_eq!(d.stages.len(), 2);
    assert_eq!(d.stages[1].line, 5);
    assert_eq!(d.stage_named("nope"), None);
}

#[test]
fn comments_directives_and_continuations_in_whole_files() {
    // Docker's reference: the escape directive example (Windows paths).
    let d =
        parse("# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n");
    assert_eq!(d.directives.escape, '`');
    assert_eq!(
        d.stages[0].steps[0].instruction,
        Instruction::Copy(Copy {
            sources: strings(&["testfile.txt"]),
            dest: "c:\\".into(),
            ..Copy::default()
        })
    );
    assert_eq!(
        d.stages[0].steps[1].instruction,
        Instruction::Run {
            command: shell("dir c:\\"),
            heredocs: vec![],
            mounts: vec![],
            network: None,
            security: None,
        }
    );

    // Docker's reference: comment lines are removed before the
    // instruction is run, even inside a continuation.
    let d = parse("FROM a\nRUN echo hello \\\n# comment\nworld\n");
    assert_eq!(
        d.stages[0].steps[0].instruction,
        Instruction::Run {
            command: shell("echo hello world"),
            heredocs: vec![],
            mounts: vec![],
            network: None,
            security: None,
        }
    );

    // Leading whitespace before comments and instructions is ignored.
    let d =
        parse("        # this is a comment-line\n  FROM a\n    RUN echo hello\nRUN echo world\n");
    assert_eq!(d.stages[0].line, 2);
    assert_eq!(d.stages[0].steps[0].line, 3);
    assert_eq!(d.stages[0].steps[1].line, 4);
}

#[test]
fn errors_name_the_line_and_say_what_is_wrong() {
    let cases: &[(&str, usize, &str)] = &[
        ("FROM a\nFOO bar\n", 2, "unknown instruction: FOO"),
        ("FROM a\nrunn x\n", 2, "unknown instruction: runn"),
        ("FROM a\nRUN\n", 2, "RUN requires at least one argument"),
        ("FROM a\nRUN []\n", 2, "RUN requires at least one argument"),
        (
            "FROM a\nRUN [\"a\", 1]\n",
            2,
            "when using JSON array syntax, arrays must be comprised of strings only",
        ),
        (
            "FROM a\nCOPY a\n",
            2,
            "COPY requires at least two arguments",
        ),
        ("FROM a\nADD\n", 2, "ADD requires at least two arguments"),
        (
            "FROM a\nCOPY a <<EOF\nx\nEOF\n",
            2,
            "COPY cannot accept a heredoc as a destination",
        ),
        ("FROM a\nCOPY --nope a b\n", 2, "unknown flag: nope"),
        (
            "FROM a\nCOPY --from a b\n",
            2,
            "missing a value on flag: from",
        ),
        (
            "FROM a\nCOPY --from=x --from=y a b\n",
            2,
            "duplicate flag specified: from",
        ),
        (
            "FROM a\nCOPY --link=maybe a b\n",
            2,
            "expecting boolean value for flag link, not: maybe",
        ),
        (
            "FROM a\nCOPY --link= a b\n",
            2,
            "missing a value on flag: link",
        ),
        ("FROM a\nADD --from=x a b\n", 2, "unknown flag: from"),
        ("FROM a\nENV --x=1 A=1\n", 2, "unknown flag: x"),
        ("FROM a\nRUN --mount\n", 2, "missing a value on flag: mount"),
        ("FROM a\nENV\n", 2, "ENV requires at least one argument"),
        ("FROM a\nENV A\n", 2, "ENV must have two arguments"),
        ("FROM a\nENV A=1 B\n", 2, "can't find = in \"B\""),
        ("FROM a\nENV =1\n", 2, "ENV names can not be blank"),
        ("FROM a\nLABEL\n", 2, "LABEL requires at least one argument"),
        ("FROM a\nLABEL a=b c\n", 2, "can't find = in \"c\""),
        ("FROM a\nARG\n", 2, "ARG requires at least one argument"),
        ("FROM a\nARG =x\n", 2, "ARG names can not be blank"),
        (
            "FROM a\nWORKDIR\n",
            2,
            "WORKDIR requires exactly one argument",
        ),
        ("FROM a\nUSER\n", 2, "USER requires exactly one argument"),
        (
            "FROM a\nSTOPSIGNAL\n",
            2,
            "STOPSIGNAL requires exactly one argument",
        ),
        (
            "FROM a\nEXPOSE\n",
            2,
            "EXPOSE requires at least one argument",
        ),
        (
            "FROM a\nVOLUME\n",
            2,
            "VOLUME requires at least one argument",
        ),
        (
            "FROM a\nVOLUME [\"\"]\n",
            2,
            "VOLUME specified can not be an empty string",
        ),
        (
            "FROM a\nSHELL /bin/sh -c\n",
            2,
            "SHELL requires the arguments to be in JSON form",
        ),
        (
            "FROM a\nSHELL []\n",
            2,
            "SHELL requires at least one argument",
        ),
        (
            "FROM a\nSHELL [\"a\", 2]\n",
            2,
            "arrays must be comprised of strings only",
        ),
        (
            "FROM a\nHEALTHCHECK\n",
            2,
            "HEALTHCHECK requires at least one argument",
        ),
        (
            "FROM a\nHEALTHCHECK NONE x\n",
            2,
            "HEALTHCHECK NONE takes no arguments",
        ),
        (
            "FROM a\nHEALTHCHECK CMD\n",
            2,
            "Missing command after HEALTHCHECK CMD",
        ),
        (
            "FROM a\nHEALTHCHECK RUN x\n",
            2,
            "Unknown type \"RUN\" in HEALTHCHECK (try CMD)",
        ),
        (
            "FROM a\nHEALTHCHECK --interval=1us CMD x\n",
            2,
            "Interval \"interval\" cannot be less than 1ms",
        ),
        (
            "FROM a\nHEALTHCHECK --timeout=5 CMD x\n",
            2,
            "invalid duration \"5\"",
        ),
        (
            "FROM a\nHEALTHCHECK --retries=-1 CMD x\n",
            2,
            "--retries cannot be negative (-1)",
        ),
        (
            "FROM a\nHEALTHCHECK --nope=1 CMD x\n",
            2,
            "unknown flag: nope",
        ),
        (
            "FROM a\nONBUILD\n",
            2,
            "ONBUILD requires at least one argument",
        ),
        (
            "FROM a\nONBUILD ONBUILD RUN x\n",
            2,
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        (
            "FROM a\nONBUILD FROM b\n",
            2,
            "FROM isn't allowed as an ONBUILD trigger",
        ),
        (
            "FROM a\nONBUILD maintainer b\n",
            2,
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        ),
        ("FROM\n", 1, "FROM requires either one or three arguments"),
        (
            "FROM a b\n",
            1,
            "FROM requires either one or three arguments",
        ),
        (
            "FROM a to b\n",
            1,
            "FROM requires either one or three arguments",
        ),
        ("FROM a AS 1b\n", 1, "invalid name for build stage: \"1b\""),
        ("FROM a AS b!\n", 1, "invalid name for build stage"),
        (
            "FROM a AS x\nFROM b AS X\n",
            2,
            "duplicate name \"x\" for build stage",
        ),
        ("FROM --plat=x a\n", 1, "unknown flag: plat"),
        ("RUN x\nFROM a\n", 1, "no build stage in current context"),
        ("ARG a\n", 1, "no build stage in current context"),
        ("", 1, "file with no instructions"),
        ("# only a comment\n\n", 1, "file with no instructions"),
        ("FROM a\nRUN <<EOF\nnever ends\n", 2, "unterminated heredoc"),
        ("# escape=x\nFROM a\n", 1, "invalid escape token 'x'"),
        (
            "# escape=`\n# escape=\\\nFROM a\n",
            2,
            "only one escape parser directive can be used",
        ),
        ("FROM a\n\n\nRUN ok\nbad\n", 5, "unknown instruction: bad"),
        (
            "FROM a\nRUN a \\\n b\nWHAT\n",
            4,
            "unknown instruction: WHAT",
        ),
    ];
    for (src, line, needle) in cases {
        let (got_line, message) = err(src);
        assert!(
            message.contains(needle),
            "{src:?}: {message:?} lacks {needle:?}"
        );
        assert_eq!(got_line, *line, "{src:?}: {message}");
    }
}

#[test]
fn error_reports_read_dockerfile_line_message() {
    let e = Dockerfile::parse("FROM a\nNOPE\n").unwrap_err();
    assert_eq!(e.report(), "Dockerfile:2: unknown instruction: NOPE");
}

#[test]
fn healthcheck_forms() {
    assert_eq!(
        one("HEALTHCHECK NONE"),
        Instruction::Healthcheck {
            check: Health::None
        }
    );
    assert_eq!(
        one("healthcheck none"),
        Instruction::Healthcheck {
            check: Health::None
        }
    );
    assert_eq!(
        one("HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=3 CMD curl -f http://localhost/ || exit 1"),
        Instruction::Healthcheck {
            check: Health::Cmd {
                command: shell("curl -f http://localhost/ || exit 1"),
                interval_ns: Some(300_000_000_000),
                timeout_ns: Some(3_000_000_000),
                start_period_ns: Some(90_000_000_000),
                start_interval_ns: Some(500_000_000),
                retries: Some(3),
            }
        }
    );
    assert_eq!(
        one("HEALTHCHECK CMD [\"/bin/check\", \"-q\"]"),
        Instruction::Healthcheck {
            check: Health::Cmd {
                command: exec(&["/bin/check", "-q"]),
                interval_ns: None,
                timeout_ns: None,
                start_period_ns: None,
                start_interval_ns: None,
                retries: None,
            }
        }
    );
}

#[test]
fn go_durations() {
    let cases: &[(&str, Option<u64>)] = &[
        ("0", Some(0)),
        ("0s", Some(0)),
        ("30s", Some(30_000_000_000)),
        ("1.5h", Some(5_400_000_000_000)),
        ("1h2m3s", Some(3_723_000_000_000)),
        ("300ms", Some(300_000_000)),
        ("10us", Some(10_000)),
        ("10µs", Some(10_000)),
        ("7ns", Some(7)),
        ("5", None),
        ("", None),
        ("s", None),
        ("1d", None),
        ("-1s", None),
    ];
    for (text, want) in cases {
        assert_eq!(go_duration_ns(text), *want, "{text:?}");
    }
}

/// A Dockerfile with every line number set to 0, to compare structure.
fn without_lines(mut d: Dockerfile) -> Dockerfile {
    for s in &mut d.meta_args {
        s.line = 0;
    }
    for stage in &mut d.stages {
        stage.line = 0;
        for s in &mut stage.steps {
            s.line = 0;
        }
    }
    d
}

#[test]
fn printed_dockerfiles_parse_to_the_same_value() {
    let sources = [
        "FROM python:3.7\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\nCOPY . .\nCMD [\"python\", \"app.py\"]\n",
        "# syntax=docker/dockerfile:1\nARG V=1 W\nFROM --platform=$BUILDPLATFORM golang:${V} AS build\nRUN --mount=type=cache,target=/root/.cache go build -o /out/app .\nFROM scratch\nCOPY --from=build --chown=1:1 --chmod=755 --link /out/app /app\nENTRYPOINT [\"/app\"]\n",
        "# escape=`\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\nENV A=`$x B=\"y z\"\n",
        "FROM a\nENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog\nENV legacy form with spaces\nLABEL \"a b\"=c d=\"e f\"\nLABEL x y\n",
        "FROM a\nRUN <<EOF\necho $HOME\n  indented\nEOF\nRUN <<-'X' cat > /f && <<Y cat > /g\n\tliteral $HOME\nX\ny\nY\nCOPY <<F <<\"G\" file /dst/\nf $V\nF\ng $V\nG\n",
        "FROM a\nEXPOSE 80 443/udp\nVOLUME /a \"/b\"\nVOLUME [\"/c d\"]\nSHELL [\"/bin/bash\", \"-c\"]\nSTOPSIGNAL SIGTERM\nUSER 1:1\nWORKDIR /w\nMAINTAINER me <me@example.com>\nONBUILD RUN echo \"triggered\"\n",
        "FROM a\nHEALTHCHECK NONE\nHEALTHCHECK --interval=1m30s --retries=2 CMD [\"check\"]\nHEALTHCHECK --timeout=10s CMD check || exit 1\n",
        "FROM a\nCOPY [\"a b\", \"c\"]\nADD --checksum=sha256:00 --keep-git-dir --exclude=*.md https://x/y.tar /z/\nCOPY --exclude=\"a b\" --parents --from=\"q\" s d\nRUN --network=none [\"a\", \"b\\\\c\", \"\\\"q\\\"\"]\nRUN [\"not\", 'json']\nCMD\n",
        "FROM a\nARG A=\"x y\" B=${A:-z}\nARG C\nRUN echo $A\n",
        "FROM a\nONBUILD RUN <<EOF\necho $V\nEOF\nONBUILD COPY <<-'X' /f\n\tx\nX\n",
        "FROM a\r\nRUN <<EOF\r\ncrlf body\r\nEOF\r\n",
    ];
    for src in sources {
        let first = parse(src);
        let printed = first.to_string();
        let second = match Dockerfile::parse(&printed) {
            Ok(d) => d,
            Err(e) => panic!("reparsing {printed:?}: {}", e.report()),
        };
        assert_eq!(
            without_lines(second.clone()),
            without_lines(first),
            "{src:?} printed as {printed:?}"
        );
        // Printing is stable.
        assert_eq!(second.to_string(), printed);
    }
}

#[test]
fn keywords_are_case_insensitive_and_flags_parse_anywhere_in_case() {
    let d = parse("from a as B\nrun x\nCoPy a b\nworkDIR /x\n");
    assert_eq!(d.stages[0].name.as_deref(), Some("b"));
    assert_eq!(d.stages[0].steps.len(), 3);
    assert_eq!(d.stage_named("B"), Some(0));
}

/// A small deterministic generator (no dependency needed for this).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Random instructions made of pieces that exercise quoting, escapes,
/// JSON, flags and heredocs; whatever parses must print and parse back
/// to the same value.
#[test]
fn random_dockerfiles_that_parse_print_back_to_the_same_value() {
    let keywords = [
        "RUN",
        "CMD",
        "ENTRYPOINT",
        "ENV",
        "LABEL",
        "ARG",
        "WORKDIR",
        "USER",
        "STOPSIGNAL",
        "COPY",
        "ADD",
        "EXPOSE",
        "VOLUME",
        "SHELL",
        "HEALTHCHECK",
        "ONBUILD",
        "MAINTAINER",
    ];
    let pieces = [
        "a",
        "b=c",
        "\"x y\"",
        "'q $v'",
        "\\",
        "\\ ",
        "$V",
        "${V:-d}",
        "[\"j\"]",
        "[",
        "]",
        ",",
        "=",
        "--from=s",
        "--link",
        "--chown=1",
        "--mount=type=cache,target=/c",
        "--",
        "<<EOF",
        "<<-X",
        "<<'Q'",
        "CMD",
        "NONE",
        "--interval=5s",
        "#",
        "é",
        "`",
        "\t",
        " ",
        " ",
        " ",
    ];
    let mut rng = Lcg(0x5eed);
    let mut parsed = 0;
    for round in 0..5000 {
        let mut src = String::new();
        if round % 7 == 0 {
            src += "# escape=`\n";
        }
        src += "FROM a AS s\n";
        for _ in 0..(1 + rng.next() % 4) {
            let mut line = rng.pick(&keywords).to_string();
            for _ in 0..(rng.next() % 6) {
                line.push(' ');
                line += rng.pick(&pieces);
            }
            src += &line;
            src.push('\n');
            // Bodies for whatever heredocs the line may have opened.
            if ["RUN", "COPY", "ADD"].iter().any(|k| line.starts_with(k)) {
                for marker in lexer::heredoc_markers(&line) {
                    src += &format!("\tbody $V\n{}\n", marker.name);
                }
            }
        }
        let Ok(first) = Dockerfile::parse(&src) else {
            continue;
        };
        parsed += 1;
        let printed = first.to_string();
        let second = match Dockerfile::parse(&printed) {
            Ok(d) => d,
            Err(e) => panic!("{src:?} printed as {printed:?} fails: {}", e.report()),
        };
        assert_eq!(
            without_lines(second),
            without_lines(first),
            "{src:?} printed as {printed:?}"
        );
    }
    assert!(parsed > 500, "only {parsed} random files parsed");
}

/// Arbitrary text never panics the parser, the resolver or the
/// `.dockerignore` reader: it is an error or a value.
#[test]
fn arbitrary_text_is_an_error_or_a_value_never_a_panic() {
    let alphabet: Vec<char> = "FROMRUNCOPYENVARGfromas \t\n\r\\`\"'$={}[]:-+?#%<>,/.*!0123é"
        .chars()
        .collect();
    let mut rng = Lcg(7);
    for _ in 0..20000 {
        let len = (rng.next() % 60) as usize;
        let mut text: String = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        if rng.next() & 1 == 0 {
            text = format!("FROM a AS b\nARG X=1\n{text}");
        }
        if let Ok(d) = Dockerfile::parse(&text) {
            let _ = d.resolve(&crate::build::BuildOptions::default(), &|_| {
                crate::build::Vars::new()
            });
            let _ = Dockerfile::parse(&d.to_string());
        }
        if let Ok(ignore) = crate::build::ignore::DockerIgnore::parse(&text) {
            let _ = ignore.is_excluded("a/b/c.txt");
        }
    }
}
