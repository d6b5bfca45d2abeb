//! The container's seccomp filter, as an allow list (Docker's model):
//! every system call fails with EPERM unless it is named here. An allow
//! list fails closed: a system call added to a later kernel stays out of
//! reach until someone decides a container needs it, which a deny list
//! cannot promise. The cost is that a program using a call missing here
//! gets EPERM; the list is therefore broad for what ordinary programs do
//! (files, sockets, processes, threads, timers, memory, signals, IPC,
//! io_uring excepted) and leaves out what needs a capability the
//! container lacks, or reaches into the host kernel's global state:
//! modules, keyrings, mounts and namespaces, clocks, kexec and reboot,
//! BPF, perf, swap, quotas, handle-based opens, NUMA policy,
//! cross-process memory access, userfaultfd, io_uring.
//!
//! Argument filters only where they are simple and matter: `clone` may
//! not create namespaces, `personality` may only pick the usual
//! personalities, and `clone3` (whose flags are in memory a filter cannot
//! read) answers ENOSYS so that C libraries fall back to `clone`.
//!
//! The list is hull's own (names as data, per x86 ABI); names a runtime's
//! libseccomp does not know are skipped by the runtime, so the list may
//! name system calls newer than the host's tools.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::OciError;

/// System calls allowed with any arguments (64-bit, then the 32-bit x86
/// names of the same operations, for i386 binaries). Kept as compact
/// data, grouped by kind: one name per line would hide the groups.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    // Files and directories.
    "access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir",
    "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync", "flock",
    "fstat", "fstatfs", "fsync", "ftruncate", "getcwd", "getdents", "getdents64", "ioctl", "lchown",
    "link", "linkat", "lseek", "lstat", "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat",
    "open", "openat", "openat2", "pipe", "pipe2", "pread64", "preadv", "preadv2", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "splice", "stat", "statfs", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate", "umask",
    "unlink", "unlinkat", "utime", "utimensat", "utimes", "futimesat", "vmsplice", "write",
    "writev", "cachestat",
    // Extended attributes.
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr",
    "listxattr", "llistxattr", "lremovexattr", "lsetxattr", "removexattr", "setxattr",
    "getxattrat", "listxattrat", "removexattrat", "setxattrat",
    // Waiting on descriptors and events.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "eventfd", "eventfd2", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "poll", "ppoll", "pselect6", "select", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_settime",
    // Asynchronous I/O (the old interface; io_uring is left out).
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit",
    // Sockets.
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recvfrom", "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto",
    "setsockopt", "shutdown", "socket", "socketpair",
    // Processes, threads and their identity.
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "get_robust_list", "getcpu", "getegid", "geteuid", "getgid", "getgroups", "getpgid",
    "getpgrp", "getpid", "getppid", "getpriority", "getresgid", "getresuid", "getrlimit",
    "getrusage", "getsid", "gettid", "getuid", "ioprio_get", "ioprio_set", "kill", "membarrier",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "ptrace", "restart_syscall",
    "rseq", "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "set_robust_list", "set_tid_address", "setfsgid", "setfsuid",
    "setgid", "setgroups", "sethostname", "setdomainname", "setpgid", "setpriority",
    "setregid", "setresgid", "setresuid", "setreuid", "setrlimit", "setsid", "setuid",
    "tgkill", "tkill", "uname", "vfork", "wait4", "waitid", "chroot", "get_thread_area",
    "set_thread_area", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "process_madvise", "process_mrelease",
    // Signals.
    "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sigaltstack",
    // Time and timers (reading clocks only).
    "alarm", "clock_getres", "clock_gettime", "clock_nanosleep", "getitimer", "gettimeofday",
    "nanosleep", "setitimer", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_settime", "times",
    // Memory.
    "brk", "futex", "futex_requeue", "futex_wait", "futex_waitv", "futex_wake",
    "madvise", "map_shadow_stack", "memfd_create", "mincore", "mlock",
    "mlock2", "mlockall", "mmap", "mprotect", "mremap", "mseal", "msync", "munlock",
    "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    // System V and POSIX IPC (in the container's IPC namespace).
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink",
    "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "shmat", "shmctl", "shmdt", "shmget",
    // Information about the (shared) system.
    "getrandom", "sysinfo", "ustat",
    // 32-bit x86 names of the operations above.
    "_llseek", "_newselect", "chown32", "clock_gettime64", "clock_nanosleep_time64",
    "fchown32", "fcntl64", "fstat64", "fstatat64", "fstatfs64", "ftruncate64", "futex_time64",
    "getegid32", "geteuid32", "getgid32", "getgroups32", "getresgid32", "getresuid32",
    "getuid32", "ipc", "lchown32", "lstat64", "mmap2", "ppoll_time64", "pselect6_time64",
    "recv", "send", "sendfile64", "setfsgid32", "setfsuid32", "setgid32", "setgroups32",
    "setregid32", "setresgid32", "setresuid32", "setreuid32", "setuid32", "sigaction",
    "sigprocmask", "sigreturn", "socketcall", "stat64", "statfs64", "truncate64", "ugetrlimit",
    "utimensat_time64", "waitpid",
];

/// `clone` flags that make namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET): a `clone` with any of them is not
/// allowed, as `unshare` is not.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Personalities a program may pick (PER_LINUX, PER_LINUX32, with
/// UNAME26, and the query 0xffffffff); others change how the host
/// kernel treats the process (e.g. READ_IMPLIES_EXEC).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// How many system calls the filter names as allowed (for `hull compare`).
pub fn allowed_count() -> usize {
    ALLOWED.len() + 2
}

fn err(e: oci_spec::OciSpecError) -> OciError {
    OciError::Spec(e)
}

/// `name` allowed when argument `index` masked with `mask` equals
/// `value`.
fn allow_if(name: &str, index: usize, mask: u64, value: u64) -> Result<LinuxSyscall, OciError> {
    let (op, value, value_two) = if mask == u64::MAX {
        (LinuxSeccompOperator::ScmpCmpEq, value, 0)
    } else {
        (LinuxSeccompOperator::ScmpCmpMaskedEq, mask, value)
    };
    let arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .map_err(err)?;
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg])
        .build()
        .map_err(err)
}

/// The filter: [`ALLOWED`], `clone` without namespace flags, the usual
/// personalities, ENOSYS for `clone3`, EPERM for everything else.
pub fn filter() -> Result<LinuxSeccomp, OciError> {
    let mut rules = vec![LinuxSyscallBuilder::default()
        .names(ALLOWED.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(err)?];
    // The clone flags are argument 0 on x86_64 (and on i386).
    rules.push(allow_if("clone", 0, CLONE_NAMESPACE_FLAGS, 0)?);
    for p in PERSONALITIES {
        rules.push(allow_if("personality", 0, u64::MAX, p)?);
    }
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .map_err(err)?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_no_duplicates_and_leaves_out_the_host_wide_calls() {
        let mut names: Vec<&str> = ALLOWED.to_vec();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a name is listed twice");
        // What every program does (terminals, files, threads, exec).
        for needed in [
            "ioctl",
            "read",
            "openat",
            "execve",
            "futex",
            "rt_sigreturn",
            "mmap",
        ] {
            assert!(ALLOWED.contains(&needed), "{needed} is not allowed");
        }
        for denied in [
            "add_key",
            "bpf",
            "init_module",
            "kexec_load",
            "keyctl",
            "mount",
            "unshare",
            "setns",
            "reboot",
            "swapon",
            "perf_event_open",
            "open_by_handle_at",
            "clock_settime",
            "io_uring_setup",
            "userfaultfd",
            "clone",
            "clone3",
            "personality",
        ] {
            assert!(!ALLOWED.contains(&denied), "{denied} is allowed");
        }
    }

    #[test]
    fn the_filter_denies_by_default_and_filters_clone_arguments() {
        let v = serde_json::to_value(filter().unwrap()).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], libc::EPERM);
        let rules = v["syscalls"].as_array().unwrap();
        assert_eq!(rules[0]["names"].as_array().unwrap().len(), ALLOWED.len());
        let clone = rules.iter().find(|r| r["names"][0] == "clone").unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        let clone3 = rules.iter().find(|r| r["names"][0] == "clone3").unwrap();
        assert_eq!(clone3["errnoRet"], libc::ENOSYS);
        assert_eq!(allowed_count(), ALLOWED.len() + 2);
    }
}
