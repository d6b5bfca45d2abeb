//! Resolving `user[:group]` the way Docker does, against the container's
//! own /etc/passwd and /etc/group.

use std::path::Path;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership).
    pub groups: Vec<u32>,
}

fn entries(root: &Path, file: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(root.join(file))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect()
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) in
/// the filesystem at `root`.
pub fn resolve(spec: &str, root: &Path) -> Result<Identity, String> {
    if spec.is_empty() {
        return Ok(Identity {
            uid: 0,
            gid: 0,
            groups: vec![],
        });
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = entries(root, "etc/passwd");
    let groups = entries(root, "etc/group");
    let pw = passwd
        .iter()
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let (uid, mut gid, name) = match (pw, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| format!("bad uid for {user} in /etc/passwd"))?,
            f[3].parse()
                .map_err(|_| format!("bad gid for {user} in /etc/passwd"))?,
            Some(f[0].clone()),
        ),
        (None, Ok(uid)) => (uid, 0, None),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ))
        }
    };
    if let Some(g) = group {
        gid = match (groups.iter().find(|f| f[0] == g), g.parse::<u32>()) {
            (Some(f), _) => f[2].parse().map_err(|_| format!("bad gid for group {g}"))?,
            (None, Ok(n)) => n,
            (None, Err(_)) => {
                return Err(format!(
                    "unable to find group {g}: no matching entries in group file"
                ))
            }
        };
    }
    let mut supplementary = Vec::new();
    if let (Some(name), None) = (name, group) {
        for f in &groups {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !supplementary.contains(&g) {
                        supplementary.push(g);
                    }
                }
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\napp:x:1000:\nstaff:x:50:app,www\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn docker_user_forms() {
        let r = root();
        let id = |s: &str| resolve(s, r.path());
        assert_eq!(
            id("").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            id("app").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![50]
            }
        );
        assert_eq!(
            id("33").unwrap(),
            Identity {
                uid: 33,
                gid: 33,
                groups: vec![50]
            }
        );
        assert_eq!(
            id("4242").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            id("app:staff").unwrap(),
            Identity {
                uid: 1000,
                gid: 50,
                groups: vec![]
            }
        );
        assert_eq!(
            id("1000:7").unwrap(),
            Identity {
                uid: 1000,
                gid: 7,
                groups: vec![]
            }
        );
        assert!(id("nobody")
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert!(id("app:nogroup")
            .unwrap_err()
            .contains("unable to find group nogroup"));
    }
}
