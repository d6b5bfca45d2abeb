//! The guest's initramfs: an uncompressed newc cpio holding only the agent
//! (as /init) and the directories it mounts onto. Uncompressed because on
//! PVM hosts the guest kernel's decompressor is emulated and costs seconds.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The agent binary cannot be read.
    #[error("Cannot read the guest agent {0}")]
    Agent(PathBuf, #[source] std::io::Error),
    /// The cache file cannot be written.
    #[error("Cannot write initramfs {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One archive member.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, ino: u32, e: &Entry<'_>) {
    let namesize = e.name.len() + 1;
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        if e.mode & S_IFDIR != 0 { 2 } else { 1 },
        0, // mtime: fixed so the archive is reproducible
        e.data.len() as u32,
        0,
        0,
        e.rdev.0,
        e.rdev.1,
        namesize as u32,
        0, // checksum (unused by "070701")
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(e.data);
    pad4(out);
}

/// The cpio bytes for an initramfs whose /init is `agent`.
pub fn build(agent: &[u8]) -> Vec<u8> {
    let mut entries = Vec::new();
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        entries.push(Entry {
            name: dir,
            mode: S_IFDIR | 0o755,
            rdev: (0, 0),
            data: &[],
        });
    }
    // The kernel opens /dev/console for init's stdio before anything mounts
    // devtmpfs, so the node must be in the archive.
    entries.push(Entry {
        name: "dev/console",
        mode: S_IFCHR | 0o600,
        rdev: (5, 1),
        data: &[],
    });
    entries.push(Entry {
        name: "init",
        mode: S_IFREG | 0o755,
        rdev: (0, 0),
        data: agent,
    });
    entries.push(Entry {
        name: "TRAILER!!!",
        mode: 0,
        rdev: (0, 0),
        data: &[],
    });
    let mut out = Vec::with_capacity(agent.len() + 4096);
    for (i, e) in entries.iter().enumerate() {
        write_entry(&mut out, i as u32 + 1, e);
    }
    out
}

/// Returns the cached initramfs for `agent` under `cache_dir`, building it
/// on first use. The name carries the agent's hash, so a new agent gets a
/// new initramfs.
pub fn cached(agent: &Path, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    let bytes = std::fs::read(agent).map_err(|e| InitramfsError::Agent(agent.into(), e))?;
    let hash = hex::encode(Sha256::digest(&bytes));
    let path = cache_dir.join(format!("initramfs-{}.cpio", &hash[..16]));
    if path.exists() {
        return Ok(path);
    }
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(cache_dir)?;
        let mut tmp = tempfile_in(cache_dir)?;
        tmp.1.write_all(&build(&bytes))?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, &path)
    };
    write().map_err(|e| InitramfsError::Write(path.clone(), e))?;
    Ok(path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".initramfs.tmp.{}", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, size, data) of every member.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            assert_eq!((total - b.len() + next) % 4, 0);
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn archive_holds_init_console_and_mount_points() {
        let agent = b"\x7fELF pretend agent, odd length";
        let members = parse(&build(agent));
        let init = members.iter().find(|m| m.0 == "init").unwrap();
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.2, agent);
        let console = members.iter().find(|m| m.0 == "dev/console").unwrap();
        assert_eq!(console.1, S_IFCHR | 0o600);
        for d in ["dev", "proc", "sys", "run"] {
            assert!(members.iter().any(|m| m.0 == d && m.1 == S_IFDIR | 0o755));
        }
    }

    #[test]
    fn cache_is_keyed_by_agent_content() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"one").unwrap();
        let a = cached(&agent, &dir.path().join("cache")).unwrap();
        assert_eq!(cached(&agent, &dir.path().join("cache")).unwrap(), a);
        std::fs::write(&agent, b"two").unwrap();
        let b = cached(&agent, &dir.path().join("cache")).unwrap();
        assert_ne!(a, b);
        assert!(std::fs::read(&b).unwrap().windows(3).any(|w| w == b"two"));
    }
}
