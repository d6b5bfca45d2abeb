//! `-t` (a PTY in the guest) for `hull run` and `hull exec`, driven from a
//! real pseudo-terminal on the host; `hull start -a`, `hull logs -f -t`,
//! `hull top`.
//! One container, three boots (preparation, run, start), shared by every
//! assertion.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_one_line_error, hull, import_busybox, require_kvm, text};

/// A command whose stdin and stdout are the slave of a host PTY (its
/// controlling terminal, as in a shell) and whose stderr is a pipe.
/// What an [`OnPty`] command left: exit code, stderr, everything it wrote
/// to the terminal, and the terminal's settings after it exited.
struct Finished {
    code: Option<i32>,
    stderr: String,
    terminal: String,
    termios: libc::termios,
}

struct OnPty {
    child: Child,
    master: File,
    slave: Option<OwnedFd>,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn set_size(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

fn termios(fd: RawFd) -> libc::termios {
    // SAFETY: termios is plain old data; all-zero is valid.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios struct to a valid pointer.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

fn same_termios(a: &libc::termios, b: &libc::termios) -> bool {
    (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_cc)
        == (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_cc)
}

impl Drop for OnPty {
    fn drop(&mut self) {
        // A failed assertion must not leave a hull (and its VM) running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl OnPty {
    /// Takes the command by value: a `Command` keeps its stdio descriptors
    /// open, and a slave open anywhere keeps the terminal from closing.
    fn spawn(mut cmd: Command, rows: u16, cols: u16) -> OnPty {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two descriptors; the other pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors from openpty, owned here.
        let (master, slave) = unsafe { (File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        set_size(master.as_raw_fd(), rows, cols);
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(Stdio::piped());
        // SAFETY: setsid and ioctl are async-signal-safe; they make the
        // PTY (already on fd 0) the child's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut from = master.try_clone().unwrap();
        let sink = output.clone();
        // Reads until EIO: once the child is gone and `slave` is dropped.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnPty {
            child,
            master,
            slave: Some(slave),
            output,
            reader: Some(reader),
        }
    }

    fn slave_fd(&self) -> RawFd {
        self.slave.as_ref().unwrap().as_raw_fd()
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.seen().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} within {timeout:?}; terminal shows {:?}",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the child; returns what it left behind.
    fn finish(mut self) -> Finished {
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = self.child.wait().unwrap();
        let termios = termios(self.slave_fd());
        drop(self.slave.take());
        self.reader.take().unwrap().join().unwrap();
        Finished {
            code: status.code(),
            stderr,
            terminal: self.seen(),
            termios,
        }
    }
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

/// The first line of `out` that starts with `prefix`, if any.
fn line_starting<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with(prefix))
}

fn is_pts(line: Option<&str>) -> bool {
    line.and_then(|l| l.strip_prefix("/dev/pts/"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// First run: a terminal; a second run (`start -a`) waits for a file that an
/// `exec` creates, and writes a line after `logs -f` started following. Its
/// background child ignores the hangup the terminal gets when the shell
/// exits and keeps the terminal open: the container must end anyway.
const SCRIPT: &str = "\
if [ -f /data/ran ]; then
  (trap '' HUP; exec sleep 1000) &
  echo second run
  while [ ! -f /data/stop ]; do sleep 1; done
  echo later line
  exit 4
fi
touch /data/ran
tty; stty size; echo to-stderr >&2; echo ready
read line; echo got:$line; stty size; exit 3";

#[test]
fn tty_run_exec_start_attach_and_logs_follow() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);

    // `-i -t` with a stdin that is not a terminal: refused as Docker does,
    // before anything is created.
    let out = hull(root)
        .args(["run", "-i", "-t", "busybox:test", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&out, "The input device is not a TTY");
    assert!(!root.join("containers").exists() || count_containers(root) == 0);

    // 1. `run -it` on a 33x97 host terminal.
    let start = Instant::now();
    let mut cmd = hull(root);
    cmd.args([
        "run",
        "-i",
        "-t",
        "--name",
        "t1",
        "busybox:test",
        "/bin/sh",
        "-c",
        SCRIPT,
    ]);
    let run = OnPty::spawn(cmd, 33, 97);
    let before = termios(run.slave_fd());
    run.wait_for("ready", Duration::from_secs(600));
    eprintln!("run -it: ready after {:?}", start.elapsed());
    // While the process runs our terminal is raw: no echo, no line
    // editing, ^C is a byte for the container.
    let during = termios(run.slave_fd());
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "host terminal not raw"
    );
    // A window-size change reaches the container's terminal.
    set_size(run.master.as_raw_fd(), 40, 120);
    std::thread::sleep(Duration::from_secs(5));
    // Enter on a raw terminal sends \r; the guest terminal makes it \n.
    (&run.master).write_all(b"hello\r").unwrap();
    let done = run.finish();
    let seen = &done.terminal;
    assert_eq!(
        done.code,
        Some(3),
        "terminal: {seen:?}; stderr: {:?}",
        done.stderr
    );
    // stdout and stderr are one stream (the terminal): nothing on ours.
    assert_eq!(done.stderr, "");
    // Our terminal is back as it was.
    assert!(
        same_termios(&before, &done.termios),
        "terminal left changed"
    );
    assert!(is_pts(line_starting(seen, "/dev/pts/")), "{seen:?}");
    for want in [
        "\r\n33 97\r\n",
        "to-stderr\r\n",
        "hello\r\n",
        "got:hello\r\n",
        "40 120\r\n",
    ] {
        assert!(seen.contains(want), "{want:?} not in {seen:?}");
    }
    eprintln!("run -it: done after {:?}", start.elapsed());

    // 2. `start -a` of the stopped container: a second boot, attached to
    //    its terminal's output (our stdout is a pipe here).
    let start = Instant::now();
    let mut attached = Killed(
        hull(root)
            .args(["start", "-a", "t1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // `logs -f -t` from the moment it runs: it must print what is already
    // logged, then lines written later, and end when the container does.
    wait_until(Duration::from_secs(60), || {
        ok(&hull(root).args(["ps", "-q"]).output().unwrap()).len() == 13
    });
    let mut follow = Killed(
        hull(root)
            .args(["logs", "-f", "-t", "t1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut attached_out = attached.0.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&first).contains("second run") {
        let n = attached_out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "start -a ended early: {:?}",
            String::from_utf8_lossy(&first)
        );
        first.extend_from_slice(&buf[..n]);
    }
    eprintln!("start -a: running after {:?}", start.elapsed());

    // `top`: the container's processes from the guest's /proc; the main
    // shell is a child of the agent (PID 1), which is not listed.
    let top = ok(&hull(root).args(["top", "t1"]).output().unwrap());
    let mut rows = top.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["UID", "PID", "PPID", "ELAPSED", "TIME", "CMD"]);
    let rows: Vec<Vec<&str>> = rows.map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.iter().all(|r| r.len() >= 6 && r[1] != "1"), "{top}");
    assert!(
        rows.iter()
            .any(|r| r[0] == "0" && r[2] == "1" && r[5..8] == ["/bin/sh", "-c", "if"]),
        "{top}"
    );

    // 3. `exec -t` in the running container, first without a terminal of
    //    ours (the PTY is still there, 0x0), ...
    let out = hull(root)
        .args(["exec", "-t", "t1", "sh", "-c"])
        .arg("tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all terminals")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let plain = ok(&out);
    assert!(is_pts(line_starting(&plain, "/dev/pts/")), "{plain:?}");
    assert!(plain.ends_with("\r\nall terminals\r\n"), "{plain:?}");
    assert_eq!(text(&out).1, "");
    // ... `-i -t` with a non-terminal stdin is refused, ...
    let out = hull(root)
        .args(["exec", "-i", "-t", "t1", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&out, "The input device is not a TTY");
    // ... `-i -t`: ^C typed on our (raw) terminal is a byte for the
    // container's terminal, whose line discipline interrupts its
    // foreground process group (the exec'd shell's: it is a session
    // leader with the PTY as controlling terminal) ...
    let mut cmd = hull(root);
    cmd.args([
        "exec",
        "-i",
        "-t",
        "t1",
        "sh",
        "-c",
        "echo armed; sleep 1000",
    ]);
    let interrupted = OnPty::spawn(cmd, 24, 80);
    let before = termios(interrupted.slave_fd());
    interrupted.wait_for("armed", Duration::from_secs(60));
    (&interrupted.master).write_all(b"\x03").unwrap();
    let done = interrupted.finish();
    assert_eq!(
        done.code,
        Some(130),
        "{:?} {:?}",
        done.terminal,
        done.stderr
    );
    assert!(
        same_termios(&before, &done.termios),
        "terminal left changed"
    );
    // ... then on a 50x132 host terminal; it releases the main process.
    let mut cmd = hull(root);
    cmd.args(["exec", "-t", "t1", "sh", "-c"])
        .arg("tty; stty size; echo $(ls /dev/pts); echo err >&2; touch /data/stop; exit 6");
    let done = OnPty::spawn(cmd, 50, 132).finish();
    let seen = &done.terminal;
    assert_eq!(done.code, Some(6), "{seen:?} {:?}", done.stderr);
    assert_eq!(done.stderr, "");
    assert!(is_pts(line_starting(seen, "/dev/pts/")), "{seen:?}");
    // Without -i our terminal stays cooked (as Docker leaves it): its
    // ONLCR makes the guest terminal's \r\n a \r\r\n.
    // The container's own devpts holds its ptmx and the terminals of its
    // processes: the main one's (0) and this one's (1, reused after the
    // first exec closed it); nothing of the guest's.
    assert!(
        seen.ends_with("\r\r\n50 132\r\r\n0 1 ptmx\r\r\nerr\r\r\n"),
        "{seen:?}"
    );

    // start -a prints the rest and returns the container's exit code, its
    // main process's, though a background child held the terminal.
    attached_out.read_to_end(&mut first).unwrap();
    let status = attached.0.wait().unwrap();
    let mut err = String::new();
    attached
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first),
        "second run\r\nlater line\r\n",
        "stderr: {err}"
    );
    assert_eq!(status.code(), Some(4), "stderr: {err}");
    eprintln!("start -a: done after {:?}", start.elapsed());

    // logs -f ended by itself, with both runs, each line timestamped.
    let logs = wait_output(&mut follow.0, Duration::from_secs(30));
    let (stdout, stderr) = text(&logs);
    assert!(logs.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| {
            let (stamp, rest) = l.split_once(' ').unwrap_or(("", l));
            assert!(
                stamp.len() >= 20 && stamp.starts_with("20") && stamp.ends_with('Z'),
                "not timestamped: {l:?}"
            );
            rest.trim_end_matches('\r')
        })
        .collect();
    assert_eq!(
        texts[texts.len() - 2..],
        ["second run", "later line"],
        "{stdout:?}"
    );
    assert!(texts.contains(&"got:hello"), "{stdout:?}");
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The child's exit and output, failing if it does not end within
/// `timeout` (its output must fit in the pipes meanwhile).
fn wait_output(child: &mut Child, timeout: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < timeout, "still running after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// A child that is killed if the test fails before it ends (a `hull start
/// -a` left behind would keep its VM running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn count_containers(root: &Path) -> usize {
    std::fs::read_dir(root.join("containers"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// `-t` with `--isolation container`: the container's terminal has the
/// host terminal's size once it runs, and follows a resize (SIGWINCH on
/// hull), with either runtime (crun passes no resize on by itself).
#[test]
fn container_mode_terminal_follows_the_window_size() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    for rt in ["crun", "runc"] {
        let mut cmd = hull(root);
        cmd.args([
            "run",
            "--rm",
            "-t",
            "--isolation",
            "container",
            "--runtime",
            rt,
        ])
        .args(["busybox:test", "sh", "-c"])
        .arg("sleep 0.5; echo size $(stty size); sleep 3; echo size $(stty size); exit 2");
        let run = OnPty::spawn(cmd, 33, 97);
        run.wait_for("size 33 97", Duration::from_secs(60));
        set_size(run.master.as_raw_fd(), 40, 120);
        let done = run.finish();
        assert_eq!(
            done.code,
            Some(2),
            "{rt}: {:?} {:?}",
            done.terminal,
            done.stderr
        );
        // The container's terminal writes \r\n; without -i the host
        // terminal stays cooked (as with Docker) and adds its own \r.
        assert_eq!(
            done.terminal, "size 33 97\r\r\nsize 40 120\r\r\n",
            "{rt}: stderr {:?}",
            done.stderr
        );
    }
}
