//! `hull image inspect` and `hull history`.

use images::store::{short, Image};
use images::Store;

use super::format;

/// Runs `hull image inspect`.
pub fn inspect(store: &Store, names: &[String], format: Option<&str>) -> anyhow::Result<u8> {
    let mut out = Vec::new();
    for n in names {
        out.push(image_json(&store.image(n)?)?);
    }
    crate::cli::output::print_inspected(&out, format)?;
    Ok(0)
}

/// An image as Docker's `image inspect` shows it.
pub fn image_json(i: &Image) -> anyhow::Result<serde_json::Value> {
    let config: serde_json::Value = serde_json::to_value(&i.config)?;
    Ok(serde_json::json!({
            "Id": i.id().to_string(),
            "Digest": i.digest.to_string(),
            "ManifestDigest": i.manifest_digest.to_string(),
            "MediaType": i.manifest_media_type,
            "RepoTags": i.names.iter().map(|r| r.familiar()).collect::<Vec<_>>(),
            "Created": i.config.created(),
            "Author": i.config.author().clone().unwrap_or_default(),
            // Docker shows the last history entry's comment (`commit -m`).
            "Comment": i.config.history().as_ref()
                .and_then(|h| h.last())
                .and_then(|h| h.comment().clone())
                .unwrap_or_default(),
            "Architecture": i.config.architecture().to_string(),
            "Os": i.config.os().to_string(),
            "Size": i.size(),
            "Config": config.get("config").cloned().unwrap_or(serde_json::Value::Null),
            "RootFS": root_fs(&config),
            "Layers": i.layers.iter().map(|l| serde_json::json!({
                "Digest": l.digest.to_string(),
                "MediaType": l.media_type,
                "Size": l.size,
            })).collect::<Vec<_>>(),
    }))
}

/// Docker's RootFS keys (`Type`, `Layers`) for the config's `rootfs`
/// (`type`, `diff_ids`).
fn root_fs(config: &serde_json::Value) -> serde_json::Value {
    let rootfs = config.get("rootfs");
    let field = |k: &str| rootfs.and_then(|r| r.get(k)).cloned();
    serde_json::json!({
        "Type": field("type").unwrap_or_else(|| "layers".into()),
        "Layers": field("diff_ids").unwrap_or_else(|| serde_json::json!([])),
    })
}

/// Runs `hull history`: the image's history as a table, newest first.
pub fn history(image: &Image, no_trunc: bool) -> anyhow::Result<u8> {
    let now = images::time::parse_unix(&images::time::now_rfc3339()).unwrap_or(0);
    let mut rows = Vec::new();
    let mut layers = image.layers.iter();
    let entries = image.config.history().clone().unwrap_or_default();
    if entries.is_empty() {
        for l in image.layers.iter() {
            rows.push([
                "<missing>".into(),
                "N/A".into(),
                String::new(),
                format::size(l.size),
                String::new(),
            ]);
        }
    }
    for h in &entries {
        let size = if h.empty_layer().unwrap_or(false) {
            0
        } else {
            layers.next().map(|l| l.size).unwrap_or(0)
        };
        let created = h
            .created()
            .as_deref()
            .and_then(images::time::parse_unix)
            .map(|t| format::ago(now.saturating_sub(t)))
            .unwrap_or_else(|| "N/A".into());
        let mut by = h.created_by().clone().unwrap_or_default();
        if !no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        rows.push([
            "<missing>".into(),
            created,
            by,
            format::size(size),
            h.comment().clone().unwrap_or_default(),
        ]);
    }
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top[0] = if no_trunc {
            image.id().to_string()
        } else {
            short(image.id())
        };
    }
    let mut table = vec![["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
        .map(String::from)
        .to_vec()];
    table.extend(rows.into_iter().map(|r| r.to_vec()));
    format::print_table(&table);
    Ok(0)
}
