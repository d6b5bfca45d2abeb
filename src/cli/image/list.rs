//! `hull images` / `hull image ls`.

use std::collections::HashSet;

use images::store::Image;
use images::{ImageSummary, Reference, Store};

use super::{format, ListArgs};
use crate::cli::output::{self, Format};

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
    let table = if a.digests {
        DIGESTS_TABLE
    } else {
        DEFAULT_TABLE
    };
    let format = Format::parse(a.format.as_deref().unwrap_or("table"), table)?;
    let rows: Vec<serde_json::Value> = rows.iter().map(|r| row(r, a.no_trunc)).collect();
    format.print(&headers(), &rows)?;
    Ok(0)
}

/// The columns of `hull images`, as Docker's.
const DEFAULT_TABLE: &str = "{{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}";
/// The columns of `hull images --digests`.
const DIGESTS_TABLE: &str =
    "{{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}";

/// The column titles of every field a row has.
fn headers() -> serde_json::Value {
    serde_json::json!({
        "Repository": "REPOSITORY",
        "Tag": "TAG",
        "ID": "IMAGE ID",
        "Digest": "DIGEST",
        "CreatedAt": "CREATED AT",
        "CreatedSince": "CREATED",
        "Size": "SIZE",
        "VirtualSize": "SIZE",
        "Containers": "CONTAINERS",
    })
}

/// One image as Docker's `images` template context.
fn row(row: &ImageSummary, no_trunc: bool) -> serde_json::Value {
    let (repo, tag) = match &row.name {
        Some(n) => (
            n.familiar_repository(),
            n.tag().unwrap_or("<none>").to_owned(),
        ),
        None => ("<none>".to_owned(), "<none>".to_owned()),
    };
    let image: &Image = &row.image;
    let created = image.config.created().clone().unwrap_or_default();
    let since = images::time::parse_unix(&created)
        .map(|_| {
            format!(
                "{} ago",
                output::human_duration(output::secs_since(&created))
            )
        })
        .unwrap_or_else(|| "N/A".into());
    serde_json::json!({
        "Repository": repo,
        "Tag": tag,
        "ID": if no_trunc { image.id().to_string() } else { image.short_id() },
        "Digest": image.digest.to_string(),
        "CreatedAt": created,
        "CreatedSince": since,
        "Size": format::size(image.size()),
        "VirtualSize": format::size(image.size()),
        "Containers": "N/A",
    })
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
