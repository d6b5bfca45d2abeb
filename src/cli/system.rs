//! `hull system prune`: housekeeping of hull's caches.

use std::path::Path;

use crate::guest::fast_start;

/// `hull system prune`: deletes the fast-start snapshots.
pub fn prune(root: &Path) -> anyhow::Result<u8> {
    let store = fast_start::snapshots_dir(root);
    let (count, bytes) = fast_start::prune(&store)
        .map_err(|e| anyhow::anyhow!("cannot prune {}: {e}", store.display()))?;
    println!(
        "Deleted {count} VM snapshot(s), {:.1} MiB reclaimed",
        bytes as f64 / (1 << 20) as f64
    );
    Ok(0)
}
