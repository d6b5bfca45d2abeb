//! `hull debug prepare`: prepare an image's root filesystem (or prepare it
//! again) and print what the preparation measured, as JSON.

use std::path::Path;

use clap::Args;

use crate::guest::rootfs::RootfsCache;

/// Options of `hull debug prepare`.
#[derive(Args, Debug)]
pub struct DebugPrepareArgs {
    /// Throw away the cached root filesystem first, so it is prepared now.
    #[arg(long)]
    pub no_cache: bool,
    /// The image.
    pub image: String,
}

/// Prepares and prints the statistics (`{}` when the cache already had it).
pub fn run(args: DebugPrepareArgs, root: &Path) -> anyhow::Result<u8> {
    let images = images::Store::open(root)?;
    let image = images.image(&args.image)?;
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| (l.digest.to_string(), l.path.clone()))
        .collect();
    let cache = RootfsCache::new(root);
    if args.no_cache {
        cache.remove(&layers)?;
    }
    let (path, stats) = cache.get_or_prepare(root, &layers)?;
    let mut out = serde_json::to_value(stats)?;
    if let Some(map) = out.as_object_mut() {
        map.insert("path".into(), path.display().to_string().into());
        map.insert("image_bytes".into(), std::fs::metadata(&path)?.len().into());
    }
    println!("{out}");
    Ok(0)
}
