//! `hull load`, `save`, `import`: images to and from archives.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::bail;
use images::archive::{self, Format};
use images::{Reference, Store};

/// Runs `hull load`: from a file, or from stdin when it is not a terminal.
pub fn load(store: &Store, input: Option<&Path>, quiet: bool) -> anyhow::Result<u8> {
    let lines = match input {
        Some(path) => archive::load(store, path)?,
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no archive given: use -i FILE or pipe one into stdin");
            }
            archive::load_reader(store, std::io::stdin().lock())?
        }
    };
    if !quiet {
        for l in lines {
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
            archive::write(store, images, std::io::stdout().lock(), format)?
        }
    }
    Ok(0)
}

/// Runs `hull import`: a root filesystem tarball as a one-layer image.
pub fn import(
    store: &Store,
    file: &Path,
    reference: Option<&str>,
    changes: &[String],
) -> anyhow::Result<u8> {
    let r = reference.map(Reference::parse).transpose()?;
    let id = images::import::import_rootfs(store, file, r.as_ref(), changes)?;
    println!("{id}");
    Ok(0)
}
