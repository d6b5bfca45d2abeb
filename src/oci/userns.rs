//! The user namespace of container-mode containers: container root is
//! not host root. Every container of a hull root shares one subordinate
//! range (as Docker's `userns-remap` does), because the cached lower
//! directory is unpacked with owners already shifted into it: a range per
//! container would need a copy or a chown of the whole tree per
//! container, or idmapped mounts (which this project's crun 1.8 and
//! runc 1.1 do not offer for the root filesystem).
//!
//! The range is the `hull` entry of /etc/subuid and /etc/subgid when
//! there is one (Docker's convention for `dockremap`); otherwise the
//! first 65536-ID block from 100000 that no entry there claims, so hull
//! never shares host IDs with another user's rootless containers. Where
//! the host refuses user namespaces (or `HULL_USERNS=host` asks for it),
//! containers run with host IDs, and `run` and `inspect` say so.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// IDs a container sees: 0..65536, as podman's and Docker's defaults.
pub const SIZE: u32 = 65_536;

/// Where the default search for a free range starts (useradd's
/// SUB_UID_MIN).
pub const DEFAULT_BASE: u32 = 100_000;

/// How a container-mode container's IDs relate to the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Mode")]
pub enum UserNamespace {
    /// Its own user namespace: container IDs `0..Size` are host IDs
    /// `HostUid..` and `HostGid..`.
    Mapped {
        /// Host UID of container root.
        #[serde(rename = "HostUid")]
        uid: u32,
        /// Host GID of container root's group.
        #[serde(rename = "HostGid")]
        gid: u32,
        /// IDs mapped.
        #[serde(rename = "Size")]
        size: u32,
    },
    /// The host's user namespace: container root is host root.
    Host {
        /// Why (the host refused, or `HULL_USERNS=host`).
        #[serde(rename = "Reason")]
        reason: String,
    },
}

impl UserNamespace {
    /// The unpacker's shift for this namespace (`None`: host IDs).
    pub fn shift(&self) -> Option<agent::unpack::IdShift> {
        match *self {
            Self::Mapped { uid, gid, size } => Some(agent::unpack::IdShift { uid, gid, size }),
            Self::Host { .. } => None,
        }
    }
}

/// The namespace new containers get on this host, with `/etc/subuid` and
/// `/etc/subgid` read from `etc`.
pub fn choose(etc: &Path) -> UserNamespace {
    if std::env::var("HULL_USERNS").is_ok_and(|v| v == "host") {
        return UserNamespace::Host {
            reason: "HULL_USERNS=host".into(),
        };
    }
    if let Err(e) = probe() {
        return UserNamespace::Host {
            reason: format!("the kernel refused a user namespace ({e})"),
        };
    }
    let subuid = std::fs::read_to_string(etc.join("subuid")).unwrap_or_default();
    let subgid = std::fs::read_to_string(etc.join("subgid")).unwrap_or_default();
    let (uid, gid) = match (named_range(&subuid), named_range(&subgid)) {
        (Some(u), Some(g)) => (u, g),
        _ => {
            let claimed: Vec<(u32, u32)> = ranges(&subuid).chain(ranges(&subgid)).collect();
            let base = free_block(&claimed);
            ((base, SIZE), (base, SIZE))
        }
    };
    UserNamespace::Mapped {
        uid: uid.0,
        gid: gid.0,
        size: uid.1.min(gid.1).min(SIZE),
    }
}

/// Whether this process may make a user namespace: a child unshares one
/// and runs `true`. A fork, so the (possibly threaded) caller is untouched.
fn probe() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("true");
    cmd.stdin(std::process::Stdio::null());
    // SAFETY: unshare(2) is async-signal-safe; it only changes the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("`true` exited {status}")))
    }
}

/// `(start, count)` of every `owner:start:count` line.
fn ranges(text: &str) -> impl Iterator<Item = (u32, u32)> + '_ {
    text.lines().filter_map(|l| {
        let mut f = l.trim().split(':');
        let (_, start, count) = (f.next()?, f.next()?, f.next()?);
        Some((start.parse().ok()?, count.parse().ok()?))
    })
}

/// The `hull:start:count` line's range, if it has at least one ID.
fn named_range(text: &str) -> Option<(u32, u32)> {
    text.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("hull:")?;
            let (start, count) = rest.split_once(':')?;
            Some((start.parse().ok()?, count.parse().ok()?))
        })
        .filter(|&(start, count): &(u32, u32)| count > 0 && start.checked_add(count).is_some())
}

/// The first block of [`SIZE`] IDs from [`DEFAULT_BASE`] (in steps of
/// [`SIZE`], as useradd hands them out) that overlaps no claimed range.
fn free_block(claimed: &[(u32, u32)]) -> u32 {
    let overlaps = |base: u64| {
        claimed.iter().any(|&(s, c)| {
            let (s, e) = (u64::from(s), u64::from(s) + u64::from(c));
            s < base + u64::from(SIZE) && base < e
        })
    };
    let mut base = u64::from(DEFAULT_BASE);
    while overlaps(base) && base + 2 * u64::from(SIZE) < u64::from(u32::MAX) {
        base += u64::from(SIZE);
    }
    base as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc(subuid: &str, subgid: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("subuid"), subuid).unwrap();
        std::fs::write(d.path().join("subgid"), subgid).unwrap();
        d
    }

    #[test]
    fn the_hull_entry_wins_else_the_first_unclaimed_block() {
        let d = etc(
            "alice:100000:65536\nhull:300000:65536\n",
            "hull:400000:70000\n",
        );
        assert_eq!(
            choose(d.path()),
            UserNamespace::Mapped {
                uid: 300_000,
                gid: 400_000,
                size: 65_536
            }
        );
        let d = etc("alice:100000:65536\n", "bob:165536:65536\n");
        assert_eq!(
            choose(d.path()),
            UserNamespace::Mapped {
                uid: 231_072,
                gid: 231_072,
                size: 65_536
            }
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(choose(d.path()).shift().unwrap().uid, DEFAULT_BASE);
    }

    #[test]
    fn inspect_names_the_mode_and_the_reason() {
        let v = serde_json::to_value(UserNamespace::Host {
            reason: "HULL_USERNS=host".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Mode": "Host", "Reason": "HULL_USERNS=host"})
        );
        let m = UserNamespace::Mapped {
            uid: 1,
            gid: 2,
            size: 3,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["Mode"], "Mapped");
        assert_eq!(serde_json::from_value::<UserNamespace>(v).unwrap(), m);
    }
}
