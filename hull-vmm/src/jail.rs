//! The VMM process's walls, raised after it opened everything it needs
//! (KVM, disks, snapshot memory, sockets) and before the guest runs: an
//! empty read-only root, no capabilities, an unprivileged user (`nobody`
//! under a root hull; the user itself under a rootless one), no way to
//! regain privileges, and no ptrace or core dumps of its memory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The user and group a jailed VMM runs as: `nobody`, which owns no file
/// (the VMM needs none once its descriptors are open). Other VMMs run as
/// the same user but cannot reach it: each sees only its own PID
/// namespace, and a non-dumpable process cannot be traced.
pub const VMM_UID: libc::uid_t = 65534;
/// See [`VMM_UID`].
pub const VMM_GID: libc::gid_t = 65534;

/// Errors raising the jail's walls.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A system call the jail needs failed.
    #[error("jail: {0} failed: {1}")]
    Call(&'static str, std::io::Error),
    /// A path with a NUL byte.
    #[error("jail: bad path {0}")]
    Path(String),
}

fn check(what: &'static str, ret: libc::c_long) -> Result<(), JailError> {
    if ret < 0 {
        return Err(JailError::Call(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Confines the calling process, which must be alone in its mount
/// namespace and single-threaded: its root becomes an empty read-only
/// file system mounted on `mount_point` (an existing directory; the mount
/// is seen only in this namespace), then it drops every privilege.
/// `rootless`: it is root of a user namespace mapped to the user who ran
/// hull, with no other user to become: it keeps that user and drops every
/// capability.
pub fn confine(mount_point: &Path, rootless: bool) -> Result<(), JailError> {
    enter_empty_root(mount_point)?;
    limit_capabilities()?;
    if !rootless {
        // Needs CAP_SETUID and CAP_SETGID, which are still effective.
        become_nobody()?;
    }
    clear_capability_sets()?;
    lock_down()
}

/// `pivot_root` into a fresh tmpfs holding nothing, then make it
/// read-only: the host's file system is gone from this process's view.
fn enter_empty_root(mount_point: &Path) -> Result<(), JailError> {
    let dir = CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|_| JailError::Path(mount_point.display().to_string()))?;
    let none = c"none";
    // SAFETY: mount(2), umount2(2), chdir(2) and pivot_root(2) with valid
    // NUL-terminated strings; each result is checked.
    unsafe {
        // Our mounts stay ours: nothing propagates back to the host.
        check(
            "making mounts private",
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as _,
        )?;
        check(
            "mounting the jail's root",
            libc::mount(
                none.as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=4k,nr_inodes=2,mode=0555".as_ptr().cast(),
            ) as _,
        )?;
        check("chdir to the jail", libc::chdir(dir.as_ptr()) as _)?;
        // pivot_root(".", "."): the old root ends up under the new one and
        // is then detached: no path leads back to it.
        check(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
        )?;
        check(
            "detaching the old root",
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _,
        )?;
        check("chdir /", libc::chdir(c"/".as_ptr()) as _)?;
        check(
            "making the jail read-only",
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ) as _,
        )?;
    }
    Ok(())
}

/// Empties the bounding and ambient sets and locks root's special
/// treatment away (an `execve` as uid 0 would otherwise grant full
/// capabilities again).
fn limit_capabilities() -> Result<(), JailError> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    // SAFETY: prctl with integer arguments; results are checked.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the kernel's last capability is fine.
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        check(
            "clearing ambient capabilities",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) as _,
        )?;
        check(
            "securebits",
            libc::prctl(
                libc::PR_SET_SECUREBITS,
                SECBIT_NOROOT
                    | SECBIT_NOROOT_LOCKED
                    | SECBIT_NO_SETUID_FIXUP_LOCKED
                    | SECBIT_KEEP_CAPS_LOCKED
                    | SECBIT_NO_CAP_AMBIENT_RAISE
                    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
                0,
                0,
                0,
            ) as _,
        )?;
    }
    Ok(())
}

/// capset(2) with every set empty.
fn clear_capability_sets() -> Result<(), JailError> {
    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    /// `struct __user_cap_data_struct` (two of them for 64 capabilities).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) with a version-3 header and its two data structs.
    check("capset", unsafe {
        libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr())
    })
}

/// Becomes `nobody` (root only: it may switch users).
fn become_nobody() -> Result<(), JailError> {
    // SAFETY: setgroups/setresgid/setresuid with a null list or integers;
    // results are checked.
    unsafe {
        check("setgroups", libc::setgroups(0, std::ptr::null()) as _)?;
        check("setresgid", libc::setresgid(VMM_GID, VMM_GID, VMM_GID) as _)?;
        check("setresuid", libc::setresuid(VMM_UID, VMM_UID, VMM_UID) as _)?;
    }
    Ok(())
}

/// `no_new_privs` (nothing it could exec gains any) and not dumpable (no
/// ptrace, no core dump of guest memory); the parent-death signal again.
fn lock_down() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments; results are checked.
    unsafe {
        check(
            "no_new_privs",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _,
        )?;
        check(
            "not dumpable",
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) as _,
        )?;
        // A credential change clears the parent-death signal the spawner
        // set; set it again (the caller then checks the parent is still
        // there).
        check(
            "parent-death signal",
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as _,
        )?;
    }
    Ok(())
}
