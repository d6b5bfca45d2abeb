//! Processes the agent runs for the host: clone/exec done by hand (so PID 1's
//! reaper owns every `waitpid`), and the reaper itself.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Condvar, Mutex};

use agent::protocol::{ExecFailure, ExecSpec};

/// Exit statuses collected by the reaper, by PID.
#[derive(Default)]
pub struct Reaper {
    state: Mutex<Reaped>,
    changed: Condvar,
}

#[derive(Default)]
struct Reaped {
    /// Raw wait statuses not yet claimed, by PID.
    exited: HashMap<i32, i32>,
    /// The last `waitpid` found no child at all.
    childless: bool,
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reaped> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps every child of PID 1 forever (orphans included), recording
    /// raw wait statuses.
    pub fn run(&self) {
        loop {
            let mut status = 0;
            // SAFETY: rusage is plain old data; all-zero is a valid value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 with valid out-pointers.
            let pid = unsafe { libc::wait4(-1, &mut status, 0, &mut usage) };
            if pid > 0 {
                trace!(
                    "reaped {pid}: {} minor faults, user {} µs, system {} µs",
                    usage.ru_minflt,
                    usage.ru_utime.tv_sec * 1_000_000 + usage.ru_utime.tv_usec,
                    usage.ru_stime.tv_sec * 1_000_000 + usage.ru_stime.tv_usec
                );
                self.lock().exited.insert(pid, status);
                self.changed.notify_all();
            } else if io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                // No children: say so, and wait until one is started.
                let mut state = self.lock();
                state.childless = true;
                self.changed.notify_all();
                let _unused = self
                    .changed
                    .wait_timeout(state, std::time::Duration::from_millis(200));
            }
        }
    }

    /// Wakes the reaper after a child was started.
    pub fn child_started(&self) {
        self.lock().childless = false;
        self.changed.notify_all();
    }

    /// Blocks until `pid` has exited; returns (exit code or 128+signal, signal).
    pub fn wait(&self, pid: i32) -> (i32, Option<i32>) {
        let mut state = self.lock();
        loop {
            if let Some(status) = state.exited.remove(&pid) {
                return decode(status);
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// As PID 1 of the guest (the caller's check): SIGKILLs every other
    /// process, then waits until all are reaped, so every stream they held
    /// is closed; gives up after `patience` (a process stuck in the kernel
    /// outlasts SIGKILL). Returns whether none is left.
    ///
    /// kill(-1) from PID 1 reaches every process but the caller (kernel
    /// threads ignore it) in one system call, where scanning /proc cost the
    /// emulated guest most of a second. Orphans are re-parented to PID 1,
    /// so "no child left" means no process left.
    pub fn kill_all(&self, patience: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        self.lock().childless = false;
        loop {
            // Again each round: a process may have forked meanwhile.
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            // The reaper sees the last exit and then no child.
            self.changed.notify_all();
            let state = self.lock();
            let now = std::time::Instant::now();
            if state.childless {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(std::time::Duration::from_millis(20));
            let (state, _) = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner());
            if state.childless {
                return true;
            }
        }
    }
}

fn decode(status: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// Looks `prog` up in the `PATH` of `env` (relative to `root`).
fn resolve(prog: &str, env: &[String], root: Option<&str>) -> String {
    if prog.contains('/') {
        return prog.to_string();
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{prog}");
        let on_disk = format!("{}{candidate}", root.unwrap_or(""));
        if std::fs::metadata(&on_disk)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            return candidate;
        }
    }
    prog.to_string()
}

/// What a new process gets as fds 0/1/2.
pub enum ChildIo<'a> {
    /// One descriptor each (`None` = /dev/null).
    Streams([Option<&'a OwnedFd>; 3]),
    /// A PTY slave on all three, made the controlling terminal of the
    /// process's new session.
    Terminal(&'a OwnedFd),
}

/// Starts `spec` with the given stdio; returns its PID, or the reason exec
/// failed.
// Over 80 lines on purpose: everything the child touches after clone
// (CLONE_VM | CLONE_VFORK) is built here and must stay alive and unmoved
// in this frame until it has exec'd; keeping it in one frame makes that
// lifetime visible.
pub fn spawn(spec: &ExecSpec, io: ChildIo<'_>, reaper: &Reaper) -> Result<i32, SpawnError> {
    if spec.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command").into());
    }
    // Everything the child needs is prepared before fork: after fork only
    // async-signal-safe calls are allowed.
    let prog = cstring(&resolve(&spec.argv[0], &spec.env, spec.root.as_deref()))?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<io::Result<_>>()?;
    let mut env = spec.env.clone();
    // A platform workaround the VMM put on the kernel command line (see
    // vmm/src/host.rs) applies to every process, unless it sets its own.
    if let Ok(tunables) = std::env::var("GLIBC_TUNABLES") {
        if !env.iter().any(|e| e.starts_with("GLIBC_TUNABLES=")) {
            env.push(format!("GLIBC_TUNABLES={tunables}"));
        }
    }
    let envp: Vec<CString> = env.iter().map(|a| cstring(a)).collect::<io::Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let root = spec.root.as_deref().map(cstring).transpose()?;
    let cwd = cstring(if spec.cwd.is_empty() { "/" } else { &spec.cwd })?;
    let devnull = cstring("/dev/null")?;
    let identity = crate::user::resolve(&spec.user, Path::new(spec.root.as_deref().unwrap_or("/")))
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
    let groups: Vec<libc::gid_t> = identity.groups.clone();
    let (fds, controlling_tty): (Vec<i32>, bool) = match io {
        ChildIo::Streams(stdio) => (
            stdio
                .iter()
                .map(|f| f.map_or(-1, |f| f.as_raw_fd()))
                .collect(),
            false,
        ),
        ChildIo::Terminal(slave) => {
            // The terminal belongs to the user it runs as (as runc does),
            // so it can e.g. chmod it; best effort, the fds work anyway.
            // SAFETY: fchown on a descriptor we hold; -1 keeps the group.
            unsafe { libc::fchown(slave.as_raw_fd(), identity.uid, u32::MAX) };
            (vec![slave.as_raw_fd(); 3], true)
        }
    };

    // A close-on-exec pipe tells the parent whether exec succeeded.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 with a valid 2-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let child = Child {
        fds: &fds,
        devnull: &devnull,
        controlling_tty,
        root: root.as_ref(),
        groups: &groups,
        uid: identity.uid,
        gid: identity.gid,
        cwd: &cwd,
        prog: &prog,
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        report: pipe[1],
    };
    // The child borrows our memory (CLONE_VM) and runs on this stack until
    // it has exec'd; CLONE_VFORK keeps this thread stopped until then, so
    // the stack and everything `child` points to outlive its use. Unlike
    // fork, nothing of the agent's address space is copied or marked
    // copy-on-write: in a guest whose page-table updates and faults are
    // emulated (PVM) that copying was most of a container's start time.
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // SAFETY: the pointer stays inside `stack` (one past its end is the
    // initial stack top, as clone(2) wants on x86); rounded down to 16.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) } as usize & !15;
    // SAFETY: `child_main` only makes async-signal-safe system calls on the
    // data in `child` (see there) and ends in execve or _exit; the agent
    // installs no signal handlers that could run on the shared memory.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&child as *const Child<'_>).cast_mut().cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    drop(stack);
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    if pid < 0 {
        // SAFETY: closing the read end we own.
        unsafe { libc::close(pipe[0]) };
        return Err(clone_error.into());
    }
    reaper.child_started();
    let mut err = [0i32; 2];
    // SAFETY: reading at most 8 bytes into an 8-byte buffer.
    let n = unsafe { libc::read(pipe[0], err.as_mut_ptr().cast(), 8) };
    // SAFETY: closing the read end we own.
    unsafe { libc::close(pipe[0]) };
    if n == 8 {
        // The child is gone; its status goes to the reaper, unclaimed.
        reaper.wait(pid);
        return Err(step_failed(&spec.argv[0], err[0], err[1]));
    }
    Ok(pid)
}

/// Why [`spawn`] failed; for a failed execve also which of Docker's
/// cases it is, so the host can exit 127 or 126 without reading messages.
#[derive(Debug)]
pub struct SpawnError {
    /// What failed, as one line.
    pub error: io::Error,
    /// Set when the program itself could not be executed.
    pub exec: Option<ExecFailure>,
}

impl From<io::Error> for SpawnError {
    fn from(error: io::Error) -> Self {
        Self { error, exec: None }
    }
}

/// The error of a child that reported `step` failing with `errno`.
fn step_failed(prog: &str, step: i32, errno: i32) -> SpawnError {
    let what = match step {
        1 => "chroot",
        2 => "chdir",
        4 => "set user",
        5 => "set controlling terminal",
        _ => return exec_failed(prog, errno),
    };
    let e = io::Error::from_raw_os_error(errno);
    io::Error::new(e.kind(), format!("{what} {prog}: {e}")).into()
}

/// A failed execve of `prog`, in Docker's words (`exec: "x": executable
/// file not found in $PATH`): users search for those.
fn exec_failed(prog: &str, errno: i32) -> SpawnError {
    let (failure, why) = match errno {
        // A bare name was looked up in PATH (`resolve`) and not found.
        libc::ENOENT if !prog.contains('/') => (
            ExecFailure::NotFound,
            "executable file not found in $PATH".to_string(),
        ),
        libc::ENOENT => (
            ExecFailure::NotFound,
            format!("stat {prog}: no such file or directory"),
        ),
        // execve of a directory or of a file without x bits.
        libc::EACCES | libc::EPERM => (ExecFailure::CannotInvoke, "permission denied".into()),
        libc::ENOEXEC => (ExecFailure::CannotInvoke, "exec format error".into()),
        _ => (
            ExecFailure::CannotInvoke,
            io::Error::from_raw_os_error(errno).to_string(),
        ),
    };
    let kind = io::Error::from_raw_os_error(errno).kind();
    SpawnError {
        error: io::Error::new(kind, format!("exec: {prog:?}: {why}")),
        exec: Some(failure),
    }
}

/// Stack of a starting child until its exec (system calls only).
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// What a starting child needs, prepared by the parent (no allocation or
/// locking is allowed between clone and exec).
struct Child<'a> {
    fds: &'a [i32],
    devnull: &'a CString,
    controlling_tty: bool,
    root: Option<&'a CString>,
    groups: &'a [libc::gid_t],
    uid: libc::uid_t,
    gid: libc::gid_t,
    cwd: &'a CString,
    prog: &'a CString,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Write end of the close-on-exec pipe: a failed step is reported as
    /// two i32s (step, errno).
    report: i32,
}

/// The child side of [`spawn`]: sets up stdio, session, root, user and
/// working directory, then execs.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` that `spawn` passed to clone and keeps
    // alive (the parent is suspended until we exec or exit). Everything
    // below is a plain system call on that data.
    unsafe {
        let c = &*(arg as *const Child<'_>);
        let fail = |step: i32| -> ! {
            let err = [step, *libc::__errno_location()];
            libc::write(c.report, err.as_ptr().cast(), 8);
            libc::_exit(127);
        };
        for (target, fd) in c.fds.iter().enumerate() {
            let src = if *fd >= 0 {
                *fd
            } else {
                libc::open(c.devnull.as_ptr(), libc::O_RDWR)
            };
            libc::dup2(src, target as i32);
        }
        libc::setsid();
        // Rust ignores SIGPIPE in the agent; programs expect the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // A session leader without a controlling terminal takes the PTY on
        // fd 0 as its own: job control and ^C work inside.
        if c.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(5);
        }
        if let Some(root) = c.root {
            if libc::chroot(root.as_ptr()) != 0 {
                fail(1);
            }
        }
        // Raw system calls, not libc's wrappers: those change the
        // credentials of every thread of the process (POSIX), walking a
        // thread list that under CLONE_VM is the agent's. Linux credentials
        // are per thread, so the raw calls change only this child.
        if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setgid, c.gid) != 0
            || libc::syscall(libc::SYS_setuid, c.uid) != 0
        {
            fail(4);
        }
        if libc::chdir(c.cwd.as_ptr()) != 0 {
            fail(2);
        }
        libc::execve(c.prog.as_ptr(), c.argv, c.envp);
        fail(3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    #[test]
    fn exec_failures_are_docker_s_cases() {
        let e = step_failed("nosuchcmd", 3, libc::ENOENT);
        assert_eq!(e.exec, Some(ExecFailure::NotFound));
        assert_eq!(
            e.error.to_string(),
            "exec: \"nosuchcmd\": executable file not found in $PATH"
        );
        let e = step_failed("/etc", 3, libc::EACCES);
        assert_eq!(e.exec, Some(ExecFailure::CannotInvoke));
        assert_eq!(e.error.to_string(), "exec: \"/etc\": permission denied");
        let e = step_failed("/no/such", 3, libc::ENOENT);
        assert_eq!(e.exec, Some(ExecFailure::NotFound));
        // A step before exec is hull's failure, not the program's.
        assert_eq!(step_failed("sh", 2, libc::ENOENT).exec, None);
    }

    /// Set in the re-run of this test binary that is PID 1 of its own PID
    /// namespace: only there may `kill(-1)` run.
    const AS_PID1: &str = "HULL_AGENT_TEST_AS_PID1";

    #[test]
    fn kill_all_as_pid_1_ends_every_process_and_their_streams() {
        if std::env::var_os(AS_PID1).is_some() {
            return kill_all_inside_the_namespace();
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "needs root for a PID namespace");
        let mut inner = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::tests::kill_all_as_pid_1_ends_every_process_and_their_streams",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(AS_PID1, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A kill that misses a process leaves the pipe open: a hang, here
        // turned into a failure (unshare --kill-child ends the namespace).
        // The output tells the result: a Reaper of the server's tests, in
        // this same process, may reap `unshare` before we can.
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut out, mut err) = (inner.stdout.take().unwrap(), inner.stderr.take().unwrap());
        std::thread::spawn(move || {
            let (mut stdout, mut stderr) = (String::new(), String::new());
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            let _ = tx.send((stdout, stderr));
        });
        let Ok((stdout, stderr)) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = inner.kill();
            panic!("the PID 1 run hung");
        };
        if let Ok(status) = inner.wait() {
            assert!(status.success(), "{stdout}\n{stderr}");
        }
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "{stdout}\n{stderr}"
        );
        assert!(stderr.contains("killed all in "), "{stderr}");
    }

    fn kill_all_inside_the_namespace() {
        assert_eq!(std::process::id(), 1, "runs as PID 1 of its namespace");
        let reaper = std::sync::Arc::new(Reaper::default());
        let run = reaper.clone();
        std::thread::spawn(move || run.run());
        // A tree sharing one pipe: a child, a grandchild (orphaned once its
        // parent is killed) and the top, all writing first.
        // Reaped by our reaper (its status is claimed below), as the
        // agent's children are.
        #[expect(clippy::zombie_processes)]
        let mut top = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "(echo child; exec sleep 1000) & \
                 sh -c '(echo grandchild; exec sleep 1000) & wait' & \
                 echo top; exec sleep 2000",
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        reaper.child_started();
        let mut out = top.stdout.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 64];
        while seen.lines().count() < 3 {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "{seen:?}");
            seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        let t0 = Instant::now();
        assert!(reaper.kill_all(Duration::from_secs(10)));
        eprintln!("killed all in {:?}", t0.elapsed());
        // Every holder of the pipe is gone: it ends, nothing was lost.
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        let mut lines: Vec<&str> = seen.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["child", "grandchild", "top"]);
        // The top's status waits for its claim: killed by SIGKILL.
        assert_eq!(reaper.wait(top.id() as i32), (128 + 9, Some(9)));
        // No process is left in the namespace but us.
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        assert_eq!(r, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ECHILD)
        );
        // With nothing to kill, it answers at once.
        assert!(reaper.kill_all(Duration::from_secs(10)));
    }
}
