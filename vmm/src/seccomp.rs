//! Syscall filters for the threads a guest can reach: the vCPU threads
//! (every MMIO and port-I/O exit, device emulation on queue notifies), the
//! VM's event-loop thread (device backends: vsock, net, serial; the
//! snapshot write) and the published-port relay threads. A guest that takes over one of them can then call
//! only what the VMM itself calls; anything else stops the VMM process at
//! once with a record of the call (see [`install_violation_handler`]).
//!
//! Built with rust-vmm's `seccompiler`, one allow list per thread kind,
//! installed by the thread itself before it runs guest code or handles a
//! device event (filters are per thread and inherited by threads a
//! filtered thread creates). The lists were made from what the VMM calls,
//! checked by running hull's VM tests with [`Mode::Log`] and collecting the
//! kernel's audit records of unlisted calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built (a rule the compiler refuses).
    #[error("cannot build the seccomp filter of the {0} thread")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of the {0} thread")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the seccomp violation handler")]
    Handler(#[source] std::io::Error),
}

/// What a filter does with a call outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stop the VMM process, recording the call (the default).
    Enforce,
    /// Allow it, and have the kernel log it (`dmesg`: audit type=1326):
    /// how the lists are checked.
    Log,
    /// No filter.
    Off,
}

impl Mode {
    /// `HULL_SECCOMP`: `off`, `log`, anything else (or unset) enforces.
    pub fn from_env() -> Self {
        match std::env::var("HULL_SECCOMP").as_deref() {
            Ok("off") => Mode::Off,
            Ok("log") => Mode::Log,
            _ => Mode::Enforce,
        }
    }
}

/// The mode of every filter this process installs: [`Mode::from_env`],
/// read once.
pub fn mode() -> Mode {
    static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();
    *MODE.get_or_init(Mode::from_env)
}

/// The kind of a filtered thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs `KVM_RUN` and emulates the devices its exits reach.
    Vcpu,
    /// Runs the device backends' event loop and writes snapshots.
    EventLoop,
    /// Accepts a published port's host connections and relays each to
    /// the guest over vsock (hull's `ports::forward`, in the VMM process):
    /// it carries guest-written bytes.
    PortRelay,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::PortRelay => "port-relay",
        }
    }
}

/// Calls every filtered thread makes: memory, locks, signals, thread
/// exit, logging, the eventfds and sockets that connect devices to their
/// backends, and disk I/O (the block device runs on the vCPU thread that
/// notified it).
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_epoll_ctl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What the event-loop thread adds: waiting for events, accepting and
/// making the vsock device's Unix-socket connections, kicking vCPUs out
/// of `KVM_RUN` (it spawns them before it filters itself), and writing a
/// snapshot's files.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_tgkill,
    libc::SYS_ioctl,
    libc::SYS_openat,
    libc::SYS_ftruncate,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_sched_getaffinity,
];

/// What a port relay thread adds: accepting clients, connecting to the
/// VM's vsock socket, and starting a thread per connection (Rust's thread
/// start: `clone3`, the new thread's robust list, restartable sequences,
/// name and signal stack). `clone3` takes its flags in memory, so they
/// cannot be checked here: a relay thread could start a process, but that
/// process inherits this filter (no `execve`).
const PORT_RELAY: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_poll,
];

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// The vCPU thread's ioctls: `KVM_RUN` and nothing else.
const VCPU_IOCTLS: &[u64] = &[KVM_RUN];

/// How many syscalls a thread of `kind` may make (`hull compare`'s
/// attack-surface row).
pub fn allowed_count(kind: ThreadKind) -> usize {
    COMMON.len()
        + match kind {
            ThreadKind::Vcpu => 1,
            ThreadKind::EventLoop => EVENT_LOOP.len(),
            ThreadKind::PortRelay => PORT_RELAY.len(),
        }
}

/// The filter of `kind` for `mode` (None for [`Mode::Off`]).
fn program(kind: ThreadKind, mode: Mode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        Mode::Off => return Ok(None),
        Mode::Log => SeccompAction::Log,
        Mode::Enforce => SeccompAction::Trap,
    };
    let build = |e| SeccompError::Build(kind.name(), e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&n| (n, Vec::new())).collect();
    match kind {
        ThreadKind::EventLoop => rules.extend(EVENT_LOOP.iter().map(|&n| (n, Vec::new()))),
        ThreadKind::PortRelay => rules.extend(PORT_RELAY.iter().map(|&n| (n, Vec::new()))),
        ThreadKind::Vcpu => {
            let ioctl = VCPU_IOCTLS
                .iter()
                .map(|&request| {
                    let cond = SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        request,
                    )
                    .map_err(build)?;
                    SeccompRule::new(vec![cond]).map_err(build)
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(libc::SYS_ioctl, ioctl);
        }
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    Ok(Some(filter.try_into().map_err(build)?))
}

/// Filters the calling thread as `kind` (nothing in [`Mode::Off`]).
pub fn install(kind: ThreadKind, mode: Mode) -> Result<(), SeccompError> {
    let Some(program) = program(kind, mode)? else {
        return Ok(());
    };
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind.name(), e))
}

/// With `HULL_TEST_SECCOMP_VIOLATION` set, makes a call no filter lists
/// (`getppid`), so tests can see what a violation does to a container
/// without a hostile guest. An environment variable rather than a build
/// feature: the tests run the same binary users do, and whoever sets a
/// VMM's environment can already end it.
pub fn test_violation() {
    if std::env::var_os("HULL_TEST_SECCOMP_VIOLATION").is_some() {
        // SAFETY: a plain syscall without arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// Where a violation is written (-1: nowhere but stderr).
static RECORD_FD: AtomicI32 = AtomicI32::new(-1);
/// Set once the handler is installed.
static HANDLER: AtomicU8 = AtomicU8::new(0);

/// Exit status of a VMM stopped by a violation: 128 + SIGSYS, what a
/// shell shows for a process the signal killed.
pub const VIOLATION_EXIT: i32 = 128 + libc::SIGSYS;

/// Installs the process's SIGSYS handler: a call outside a filter's list
/// writes `seccomp violation: syscall N` to stderr and, when `record` is
/// given, the number alone to it (an open file the caller reads back after
/// the VMM is gone), then ends the process with [`VIOLATION_EXIT`]. The
/// file must be open before the filters exist: the handler runs under them.
pub fn install_violation_handler(record: Option<std::fs::File>) -> Result<(), SeccompError> {
    if let Some(f) = record {
        use std::os::fd::IntoRawFd;
        let old = RECORD_FD.swap(f.into_raw_fd(), Ordering::AcqRel);
        if old >= 0 {
            // SAFETY: `old` was a descriptor we took ownership of above
            // in an earlier call; nothing else closes it.
            unsafe { libc::close(old) };
        }
    }
    if HANDLER.swap(1, Ordering::AcqRel) == 1 {
        return Ok(());
    }
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

/// The number of the call a SIGSYS from seccomp reports (`si_syscall`,
/// after `si_call_addr` in the kernel's `_sigsys` member of siginfo).
fn reported_syscall(info: *mut libc::siginfo_t) -> i32 {
    // The union starts after si_signo, si_errno and si_code (padded to 16
    // bytes on x86_64); `_sigsys` is { void *call_addr; int syscall; ... }.
    const SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();
    // SAFETY: the kernel passes a full siginfo_t (128 bytes); the field
    // lies within it.
    unsafe { std::ptr::read_unaligned((info as *const u8).add(SYSCALL_OFFSET) as *const i32) }
}

/// Formats `n` in decimal into `buf`; returns the digits.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe calls that every filter allows: write, _exit.
    let nr = reported_syscall(info).max(0) as u32;
    let mut digits = [0u8; 10];
    let digits = decimal(nr, &mut digits);
    let fd = RECORD_FD.load(Ordering::Acquire);
    let write = |fd: i32, bytes: &[u8]| {
        // SAFETY: write(2) from a valid slice; the result does not matter.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    };
    if fd >= 0 {
        write(fd, digits);
    }
    write(2, b"hull: seccomp violation: syscall ");
    write(2, digits);
    write(2, b"\n");
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(VIOLATION_EXIT) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds_in_every_mode() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::EventLoop,
            ThreadKind::PortRelay,
        ] {
            assert!(program(kind, Mode::Enforce).unwrap().is_some());
            assert!(program(kind, Mode::Log).unwrap().is_some());
            assert!(program(kind, Mode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn counts_match_the_lists() {
        assert_eq!(allowed_count(ThreadKind::Vcpu), COMMON.len() + 1);
        assert!(allowed_count(ThreadKind::EventLoop) > allowed_count(ThreadKind::Vcpu));
        for list in [COMMON, EVENT_LOOP, PORT_RELAY] {
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "a call listed twice");
        }
        for extra in [EVENT_LOOP, PORT_RELAY] {
            assert!(
                extra.iter().all(|n| !COMMON.contains(n)),
                "listed in COMMON too"
            );
        }
    }

    #[test]
    fn numbers_print_in_decimal() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(59, &mut b), b"59");
        assert_eq!(decimal(u32::MAX, &mut b), b"4294967295");
    }

    /// A filtered thread may do what it is listed for; an unlisted call
    /// stops the process with the call's number on record. Run in a child
    /// process: the violation ends the process.
    #[test]
    fn an_unlisted_call_stops_the_process_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("violation");
        let file = std::fs::File::create(&record).unwrap();
        // Built before the fork: the child of a threaded test runner
        // must not allocate.
        let program = program(ThreadKind::Vcpu, Mode::Enforce).unwrap().unwrap();
        // SAFETY: fork in a test; the child only installs the handler and
        // the filter and makes raw calls before it exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if install_violation_handler(Some(file)).is_err()
                || seccompiler::apply_filter(&program).is_err()
            {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(1) };
            }
            // Listed: fine.
            // SAFETY: getpid has no preconditions.
            unsafe { libc::getpid() };
            // Unlisted on a vCPU thread.
            // SAFETY: a plain syscall; the filter stops it.
            unsafe { libc::syscall(libc::SYS_getppid) };
            // SAFETY: not reached when the filter works.
            unsafe { libc::_exit(0) };
        }
        drop(file);
        let mut status = 0;
        // SAFETY: waitpid for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), VIOLATION_EXIT);
        assert_eq!(
            std::fs::read_to_string(&record).unwrap(),
            libc::SYS_getppid.to_string()
        );
    }
}
