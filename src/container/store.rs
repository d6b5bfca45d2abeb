//! The containers of a hull root: one directory each under
//! `<root>/containers/<id>/` (config.json, state.json, logs, disks, socket).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{ContainerConfig, State};

/// Errors finding or creating containers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No container matches.
    #[error("No such container: {0}")]
    NotFound(String),
    /// A prefix matches several containers.
    #[error("Multiple containers match {0:?}: use more of the ID")]
    Ambiguous(String),
    /// The name is taken.
    #[error("The container name {0:?} is already in use by container {1}")]
    NameInUse(String, String),
    /// Filesystem trouble.
    #[error("Container store {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// The container directories of one hull root.
pub struct ContainerStore {
    dir: PathBuf,
}

/// A container found in the store.
pub struct Container {
    /// Its directory.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: ContainerConfig,
    /// Its current state.
    pub state: State,
}

impl ContainerStore {
    /// The store of hull root `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("containers"),
        }
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        StoreError::Io(self.dir.clone(), e)
    }

    /// Takes the store's lock (names are unique across hull processes),
    /// then removes what a creation or removal killed half-way left.
    fn lock(&self) -> Result<File, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let lock =
            crate::file_lock::lock_exclusive(&self.dir.join(".lock")).map_err(|e| self.io(e))?;
        self.remove_half_done();
        Ok(lock)
    }

    /// `.ID.tmp` and `.removing.ID` directories: they exist only while
    /// `create` or `remove` holds the lock, so under it any one found is
    /// the leftover of a killed hull.
    fn remove_half_done(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_half_done(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::debug!("removing {name}, left by an interrupted hull");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Removes what a killed creation or removal left, if no other hull
    /// holds the lock (one that does may be creating or removing that very
    /// directory): readers such as `ps` clean up too, without waiting.
    fn remove_half_done_if_idle(&self) {
        let lock = crate::file_lock::try_lock_exclusive(&self.dir.join(".lock"));
        if let Ok(Some(_lock)) = lock {
            self.remove_half_done();
        }
    }

    /// Every container, newest first; first removes what a killed
    /// creation or removal left, unless another hull is at work.
    pub fn list(&self) -> Result<Vec<Container>, StoreError> {
        let mut names = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        if names.any(|e| is_half_done(&e.file_name().to_string_lossy())) {
            self.remove_half_done_if_idle();
        }
        self.list_as_is()
    }

    /// Every container, newest first, leaving what a killed creation or
    /// removal left (`hull system check` reports it).
    pub fn list_as_is(&self) -> Result<Vec<Container>, StoreError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io(e)),
        };
        for entry in entries.flatten() {
            // `.ID.tmp` (being created) and `.removing.ID` (being removed)
            // hold a config.json too, but are no container: a `hull rm`
            // killed after its rename must not leave one listed.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let dir = entry.path();
            // Directories without both files are half-made or half-removed.
            let Ok(bytes) = std::fs::read(dir.join("config.json")) else {
                continue;
            };
            let Ok(config) = serde_json::from_slice::<ContainerConfig>(&bytes) else {
                continue;
            };
            let Ok(state) = State::load(&dir) else {
                continue;
            };
            out.push(Container { dir, config, state });
        }
        out.sort_by(|a, b| b.config.created.cmp(&a.config.created));
        Ok(out)
    }

    /// The container named `key`, or whose ID starts with `key`.
    pub fn find(&self, key: &str) -> Result<Container, StoreError> {
        let mut all = self.list()?;
        if let Some(i) = all
            .iter()
            .position(|c| c.config.name == key || c.config.id == key)
        {
            return Ok(all.swap_remove(i));
        }
        let mut matches: Vec<Container> = all
            .into_iter()
            .filter(|c| !key.is_empty() && c.config.id.starts_with(key))
            .collect();
        match matches.len() {
            0 => Err(StoreError::NotFound(key.into())),
            1 => Ok(matches.remove(0)),
            _ => Err(StoreError::Ambiguous(key.into())),
        }
    }

    /// Creates the directory of a new container (name checked under the lock).
    pub fn create(&self, config: &ContainerConfig) -> Result<PathBuf, StoreError> {
        let _lock = self.lock()?;
        if let Some(other) = self
            .list()?
            .into_iter()
            .find(|c| c.config.name == config.name)
        {
            return Err(StoreError::NameInUse(
                config.name.clone(),
                short(&other.config.id),
            ));
        }
        let dir = self.dir.join(&config.id);
        let tmp = self.dir.join(format!(".{}.tmp", config.id));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&tmp)?;
            create_private(&tmp.join("config.json"))?
                .write_all(&serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?)?;
            State::created().save(&tmp)?;
            std::fs::rename(&tmp, &dir)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            self.io(e)
        })?;
        crate::events::container(self.root(), config, "create", &[]);
        Ok(dir)
    }

    /// Replaces the configuration of the container in `dir` (atomically,
    /// under the lock): `hull network connect|disconnect` of a stopped one.
    pub fn save_config(&self, dir: &Path, config: &ContainerConfig) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let tmp = dir.join(".config.json.tmp");
        let bytes =
            serde_json::to_vec_pretty(config).map_err(|e| self.io(std::io::Error::other(e)))?;
        create_private(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| std::fs::rename(&tmp, dir.join("config.json")))
            .map_err(|e| self.io(e))
    }

    /// The hull root this store is in.
    fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Removes a container's directory (disks, logs, socket, state).
    pub fn remove(&self, dir: &Path) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        if !dir.exists() {
            // Another hull removed it while we waited for the lock.
            return Ok(());
        }
        let config: Option<ContainerConfig> = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // Rename first so a half-removed directory is never listed.
        let gone = self.dir.join(format!(
            ".removing.{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        std::fs::rename(dir, &gone).map_err(|e| self.io(e))?;
        if let (Some(config), Ok(state)) = (&config, super::state::State::load(&gone)) {
            // A VMM process whose supervisor was killed leaves these.
            crate::guest::vmm_process::remove_leftovers(
                &super::engine::socket_path(self.root(), &config.id),
                &state.vm_cgroups,
            );
        }
        if let Some(config) = config {
            // A VMM killed with -9 leaves its vsock sockets behind.
            remove_sockets(&self.root().join("run"), &config.id);
            crate::events::container(self.root(), &config, "destroy", &[]);
        }
        std::fs::remove_dir_all(&gone).map_err(|e| self.io(e))
    }
}

/// Whether a name in the store is a container being created (`.ID.tmp`)
/// or removed (`.removing.ID`).
fn is_half_done(name: &str) -> bool {
    name.starts_with(".removing.") || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Creates (or truncates) `path` readable and writable by its owner only:
/// a container's configuration holds its `-e` values, its log and disks
/// its data.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// The container's sockets in `run`: its vsock socket (`ID12.vsock`), its
/// per-port sockets (`ID12.vsock_PORT`), a container-mode console socket
/// (`ID12.console`) a killed run left.
fn remove_sockets(run: &Path, id: &str) {
    let prefix = format!("{}.", &id[..12.min(id.len())]);
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The 12-digit short form of an ID (the same as images').
pub use images::digest::short_id as short;

/// A new random container ID (64 hex digits).
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}

/// A Docker-like generated name: adjective_noun, unique in `taken`.
pub fn generate_name(taken: &[String]) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fond", "keen", "lucid", "quiet", "sharp", "swift", "wise",
    ];
    const NOUN: &[&str] = &[
        "turing", "hopper", "lovelace", "ritchie", "thompson", "knuth", "liskov", "dijkstra",
        "hamilton", "torvalds",
    ];
    let seed = new_id();
    let b = seed.as_bytes();
    for i in 0..1000usize {
        let a = ADJ[(usize::from(b[0]) + i) % ADJ.len()];
        let n = NOUN[(usize::from(b[1]) + i / ADJ.len()) % NOUN.len()];
        let name = if i < ADJ.len() * NOUN.len() {
            format!("{a}_{n}")
        } else {
            format!("{a}_{n}_{i}")
        };
        if !taken.contains(&name) {
            return name;
        }
    }
    format!("hull_{}", short(&seed))
}
