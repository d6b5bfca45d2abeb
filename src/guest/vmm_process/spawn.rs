//! Making the VMM process: one `clone3` creates it in its own PID, mount,
//! IPC, UTS and network namespaces and hands back a pidfd, then it `exec`s
//! `hull-vmm`. `std::process::Command` cannot create namespaces for the
//! child itself (a `pre_exec` unshare of the PID namespace only applies to
//! the child's children), and doing it in the child would need a second
//! fork: one process more per VM.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The part of the kernel's `struct clone_args` we use (its first
/// version, `CLONE_ARGS_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// The namespaces a jailed VMM gets: it sees no other process, mount,
/// IPC object, host name or network interface of the host (its taps and
/// passt sockets arrive as descriptors).
const JAIL_NAMESPACES: libc::c_int = libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;

/// The jail of a non-root hull: its user namespace too, where it is root
/// with the capabilities it needs to build the jail, and the user itself
/// outside.
const ROOTLESS_NAMESPACES: libc::c_int = JAIL_NAMESPACES | libc::CLONE_NEWUSER;

/// Which namespaces a VMM process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// New ones, made by root.
    Jail,
    /// New ones in a new user namespace (hull is not root).
    RootlessJail,
}

/// Descriptors at or above this number are the spawner's temporary
/// copies, out of the way of the numbers the child gets.
const HIGH_FD: libc::c_int = 100;

/// A started VMM process.
pub struct Spawned {
    /// Its PID in our PID namespace.
    pub pid: i32,
    /// A pidfd on it (signals and waits never reach a reused PID).
    pub pidfd: OwnedFd,
}

/// Everything `exec` needs, built before the process exists: the child
/// may not allocate (another thread of ours may hold the allocator's
/// lock at the moment of the clone).
struct ExecImage {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl ExecImage {
    fn new(exe: &Path, args: &[&str]) -> std::io::Result<Self> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))
        };
        let mut argv = vec![c(exe.as_os_str())?];
        for a in args {
            argv.push(c(OsStr::new(a))?);
        }
        let envp = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                c(&kv)
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            path: c(exe.as_os_str())?,
            argv,
            envp,
        })
    }
}

/// Starts `exe args` with `fds` (`(ours, theirs)`) at the given numbers
/// (no other descriptor of ours), in `namespaces`.
pub fn spawn(
    exe: &Path,
    args: &[&str],
    fds: &[(RawFd, RawFd)],
    namespaces: Namespaces,
) -> std::io::Result<Spawned> {
    let image = ExecImage::new(exe, args)?;
    let argv: Vec<*const libc::c_char> = (image.argv.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = (image.envp.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // Copies above every target number, so no placement overwrites a
    // descriptor a later one reads; close-on-exec, so only the placed
    // ones reach the program.
    let high: Vec<(OwnedFd, RawFd)> = fds
        .iter()
        .map(|&(ours, theirs)| {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we hold; the
            // result is checked.
            let fd = unsafe { libc::fcntl(ours, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nothing else owns.
            Ok((unsafe { OwnedFd::from_raw_fd(fd) }, theirs))
        })
        .collect::<std::io::Result<_>>()?;
    let places: Vec<(RawFd, RawFd)> = high.iter().map(|(h, t)| (h.as_raw_fd(), *t)).collect();
    // In a new user namespace, the process must not exec before its root
    // is mapped (exec as an unmapped user would drop the capabilities it
    // needs to build the jail): it waits for our byte on this pipe.
    let gate = Gate::new()?;
    let mut pidfd: libc::c_int = -1;
    let namespaces = match namespaces {
        Namespaces::Jail => JAIL_NAMESPACES,
        Namespaces::RootlessJail => ROOTLESS_NAMESPACES,
    };
    let args = CloneArgs {
        flags: (libc::CLONE_PIDFD | namespaces) as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with a valid clone_args of the size we pass and no
    // shared memory (no CLONE_VM): the child runs on a copy of our stack
    // and only calls `become_program`, which never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        if namespaces & libc::CLONE_NEWUSER != 0 && !gate.pass() {
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(126) };
        }
        // SAFETY: we are the new process; everything it uses was built
        // before the clone.
        unsafe { become_program(&image.path, &argv, &envp, &places) }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(high);
    if namespaces & libc::CLONE_NEWUSER != 0 {
        // On failure the gate closes unopened and the process ends.
        map_own_ids(pid as i32)?;
        gate.open()?;
    }
    Ok(Spawned {
        pid: pid as i32,
        // SAFETY: clone3 with CLONE_PIDFD stored a new descriptor.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
    })
}

/// A pipe the new process waits on until the spawner lets it go.
struct Gate {
    read: OwnedFd,
    write: OwnedFd,
}

impl Gate {
    fn new() -> std::io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) fills two descriptors; the result is checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: two fresh descriptors nothing else owns.
        Ok(unsafe {
            Self {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }

    /// In the new process: waits for the spawner's byte (async-signal
    /// safe); false if the spawner closed the gate without one.
    fn pass(&self) -> bool {
        // Our copy of the write end would keep the read from ever seeing
        // the end of the pipe.
        // SAFETY: close(2) of our copy of a descriptor; read(2) of one
        // byte into a local.
        unsafe {
            libc::close(self.write.as_raw_fd());
            let mut byte = 0u8;
            libc::read(self.read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) == 1
        }
    }

    /// In the spawner: lets the new process go.
    fn open(self) -> std::io::Result<()> {
        // SAFETY: write(2) of one byte from a local to our pipe.
        let n = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Maps root of `pid`'s new user namespace to our user and group (the
/// only ids an unprivileged process may map), with `setgroups` denied as
/// the kernel requires for that.
fn map_own_ids(pid: i32) -> std::io::Result<()> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let proc = format!("/proc/{pid}");
    std::fs::write(format!("{proc}/setgroups"), "deny")?;
    std::fs::write(format!("{proc}/uid_map"), format!("0 {uid} 1"))?;
    std::fs::write(format!("{proc}/gid_map"), format!("0 {gid} 1"))
}

/// The child's side: place the descriptors, unblock signals, die with
/// the spawner, exec. Only async-signal-safe calls; never returns.
///
/// # Safety
/// Call only in a child made by clone without shared memory, with
/// pointers that stay valid (built by the parent before the clone).
unsafe fn become_program(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    places: &[(RawFd, RawFd)],
) -> ! {
    for &(high, target) in places {
        // SAFETY: dup2 onto a number we own in this process; it clears
        // close-on-exec on the target.
        if unsafe { libc::dup2(high, target) } < 0 {
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(126) };
        }
    }
    // SAFETY: a zeroed sigset_t is a valid empty set on Linux; clearing
    // the blocked mask the spawning thread may have had.
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    // The VMM must not outlive the hull process that started it (which
    // holds the container's locks and state). The setting survives exec.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: NUL-terminated arrays of C strings built by the parent.
    unsafe {
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}
