//! `hull images` / `hull image ls`.

use std::collections::HashSet;

use anyhow::bail;
use images::store::Image;
use images::{ImageSummary, Reference, Store};

use super::{format, ListArgs};

/// Runs `hull images`: a table, JSON lines or only the IDs.
pub fn list(store: &Store, a: &ListArgs) -> anyhow::Result<u8> {
    let _ = a.all;
    let mut rows = store.list()?;
    if let Some(filter) = &a.repository {
        keep_repository(&mut rows, filter)?;
    }
    if a.quiet {
        let mut seen = HashSet::new();
        for row in &rows {
            let id = row.image.short_id();
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(0);
    }
    let now = images::time::parse_unix(&images::time::now_rfc3339()).unwrap_or(0);
    let created = |i: &Image| {
        i.config
            .created()
            .as_deref()
            .and_then(images::time::parse_unix)
            .map(|t| format::ago(now.saturating_sub(t)))
            .unwrap_or_else(|| "N/A".into())
    };
    let name_of = |row: &ImageSummary| match &row.name {
        Some(n) => (
            n.familiar_repository(),
            n.tag().unwrap_or("<none>").to_owned(),
        ),
        None => ("<none>".to_owned(), "<none>".to_owned()),
    };
    match a.format.as_str() {
        "json" => {
            for row in &rows {
                let (repo, tag) = name_of(row);
                let v = serde_json::json!({
                    "Repository": repo,
                    "Tag": tag,
                    "ID": row.image.short_id(),
                    "Digest": row.image.digest.to_string(),
                    "CreatedAt": row.image.config.created(),
                    "CreatedSince": created(&row.image),
                    "Size": format::size(row.image.size()),
                    "VirtualSize": row.image.size(),
                });
                println!("{v}");
            }
        }
        "table" => {
            let mut table = vec![{
                let mut h = vec!["REPOSITORY", "TAG"];
                if a.digests {
                    h.push("DIGEST");
                }
                h.extend(["IMAGE ID", "CREATED", "SIZE"]);
                h.into_iter().map(String::from).collect::<Vec<_>>()
            }];
            for row in &rows {
                let (repo, tag) = name_of(row);
                let mut r = vec![repo, tag];
                if a.digests {
                    r.push(row.image.digest.to_string());
                }
                r.extend([
                    row.image.short_id(),
                    created(&row.image),
                    format::size(row.image.size()),
                ]);
                table.push(r);
            }
            format::print_table(&table);
        }
        other => bail!("unknown --format {other:?} (table, json)"),
    }
    Ok(0)
}

/// Keeps the rows of `filter`: `REPO` matches every tag of it; `REPO:TAG`
/// that tag only.
fn keep_repository(rows: &mut Vec<ImageSummary>, filter: &str) -> anyhow::Result<()> {
    let has_tag = filter
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    let want = Reference::parse(filter)?;
    rows.retain(|row| {
        row.name.as_ref().is_some_and(|n| {
            n.repository() == want.repository() && (!has_tag || n.tag() == want.tag())
        })
    });
    Ok(())
}
