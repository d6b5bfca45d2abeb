//! Reading an image's files into the guest's page cache before a per-image
//! snapshot is taken: every container restored from that snapshot then
//! finds them in (shared, copy-on-write) memory instead of reading them
//! through the emulated disk path, where a cold `exec` cost most of a
//! container's start.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Large reads: each read is a system call, and those are costly here.
const CHUNK: usize = 1 << 20;

/// Reads regular files under `root` (depth first, never leaving `root`'s
/// file system, never following symlinks) until `max_bytes` have been read.
/// Returns the bytes read. Unreadable entries are skipped: warming is an
/// optimisation, never a reason to fail.
pub fn read_tree(root: &Path, max_bytes: u64) -> io::Result<u64> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut buf = vec![0u8; CHUNK];
    let mut budget = max_bytes;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() && meta.len() > 0 {
                if budget == 0 {
                    return Ok(max_bytes);
                }
                let Ok(mut f) = File::open(entry.path()) else {
                    continue;
                };
                while budget > 0 {
                    let want = buf.len().min(budget.min(usize::MAX as u64) as usize);
                    match f.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => budget -= n as u64,
                    }
                }
            }
        }
    }
    Ok(max_bytes - budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_below_within_the_budget_and_skips_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/one"), vec![1u8; 3000]).unwrap();
        std::fs::write(d.join("a/b/two"), vec![2u8; 5000]).unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        // A symlink out of the tree is not followed.
        std::os::unix::fs::symlink("/etc/hostname", d.join("out")).unwrap();
        std::os::unix::fs::symlink("/", d.join("a/root")).unwrap();
        assert_eq!(read_tree(d, 1 << 20).unwrap(), 8000);
        assert_eq!(read_tree(d, 4000).unwrap(), 4000);
        assert_eq!(read_tree(d, 0).unwrap(), 0);
        assert!(read_tree(&d.join("missing"), 10).is_err());
    }
}
