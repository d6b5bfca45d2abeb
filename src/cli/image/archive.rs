//! `hull load`, `save`, `import`: images to and from archives.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::bail;
use images::archive::{self, Format};
use images::{Reference, Store};

use crate::events::{Event, Kind};

/// Runs `hull load`: from a file, or from stdin when it is not a terminal.
pub fn load(store: &Store, root: &Path, input: Option<&Path>, quiet: bool) -> anyhow::Result<u8> {
    let lines = match input {
        Some(path) => archive::load(store, path)?,
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no archive given: use -i FILE or pipe one into stdin");
            }
            archive::load_reader(store, std::io::stdin().lock())?
        }
    };
    for l in &lines {
        // `Loaded image: NAME` or `Loaded image ID: sha256:...`.
        let name = l.split_once(": ").map_or(l.as_str(), |(_, n)| n);
        crate::events::record(root, &Event::now(Kind::Image, "load", name, &[]));
        if !quiet {
            println!("{l}");
        }
    }
    Ok(0)
}

/// Runs `hull save`: to a file, or to stdout when it is not a terminal.
pub fn save(
    store: &Store,
    images: &[String],
    output: Option<&Path>,
    format: Format,
) -> anyhow::Result<u8> {
    match output {
        Some(path) => archive::save(store, images, path, format)?,
        None => {
            if std::io::stdout().is_terminal() {
                bail!("refusing to write an archive to a terminal: use -o FILE or a pipe");
            }
            let written = archive::write(store, images, std::io::stdout().lock(), format);
            if let Err(e) = written.map_err(anyhow::Error::from) {
                if broken_pipe(&e) {
                    return Ok(SIGPIPE_STATUS);
                }
                return Err(e);
            }
        }
    }
    Ok(0)
}

/// How a shell reports a writer that its reader left (`| head -c0`):
/// Docker ends quietly by SIGPIPE; we end quietly with the same status.
const SIGPIPE_STATUS: u8 = 128 + libc::SIGPIPE as u8;

/// Whether `e` is a write to a pipe nobody reads any more.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs `hull import`: a root filesystem tarball as a one-layer image.
pub fn import(
    store: &Store,
    root: &Path,
    file: &Path,
    reference: Option<&str>,
    changes: &[String],
) -> anyhow::Result<u8> {
    let r = reference.map(Reference::parse).transpose()?;
    let id = images::import::import_rootfs(store, file, r.as_ref(), changes)?;
    let attributes: Vec<(&str, &str)> = reference.map(|n| ("name", n)).into_iter().collect();
    crate::events::record(
        root,
        &Event::now(Kind::Image, "import", id.as_ref(), &attributes),
    );
    println!("{id}");
    Ok(0)
}
