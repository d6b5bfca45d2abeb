//! `hull rmi` / `hull image rm` and `hull image prune`.

use std::path::Path;

use images::store::ImageUser;
use images::Store;

use super::{format, RmiArgs};
use crate::events::{record, Event, Kind};

/// Runs `hull image prune`: removes the images no container uses.
pub fn prune(store: &Store, users: &[ImageUser]) -> anyhow::Result<u8> {
    let (removed, freed) = store.prune(users)?;
    if !removed.is_empty() {
        println!("Deleted Images:");
        for id in removed {
            println!("deleted: {id}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", format::size(freed));
    Ok(0)
}

/// The containers of the hull root, as users of their images: running or
/// stopped, each keeps its image (and the blobs it may need to prepare
/// its root filesystem again) until it is removed.
pub fn image_users(root: &Path) -> anyhow::Result<Vec<ImageUser>> {
    use crate::container::{state::Status, store};
    Ok(store::ContainerStore::new(root)
        .list()?
        .into_iter()
        .map(|c| ImageUser {
            container: store::short(&c.config.id),
            running: c.state.status == Status::Running,
            image_id: c.config.image_id,
        })
        .collect())
}

/// Runs `hull rmi`; 1 if any image could not be removed.
pub fn rmi(store: &Store, root: &Path, a: &RmiArgs, users: &[ImageUser]) -> anyhow::Result<u8> {
    let mut code = 0;
    for img in &a.images {
        match store.remove(img, a.force, users) {
            Ok(rep) => {
                for u in rep.untagged {
                    println!("Untagged: {u}");
                    record(root, &Event::now(Kind::Image, "untag", &u, &[]));
                }
                for d in rep.deleted {
                    println!("Deleted: {d}");
                    record(root, &Event::now(Kind::Image, "delete", &d, &[]));
                }
            }
            Err(e) => {
                eprintln!("hull: {:#}", anyhow::Error::from(e));
                code = 1;
            }
        }
    }
    Ok(code)
}
