//! The merged filesystem tree the image builder applies layers to, in
//! memory, with the `Unpacker`'s semantics (docs/unpack.md "Semantics").
//!
//! Only metadata is kept: file contents are already in the output image
//! (`Body::File` holds their first block and size). The tree must stay
//! small, because in the guest every fresh page of heap costs milliseconds:
//! names live in one arena, a directory's children are 12-byte records,
//! and lookups go through one hash map keyed by (directory, name hash).
//! Removed children are tombstoned and compacted in bulk, so whiteouts of
//! many names in one directory stay linear.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::io;

use super::tar::{Entry, Kind};
use super::whiteout::{self, Created, Whiteout};
use super::{split, Error, Stats};

/// Index of an inode in [`Tree::inodes`].
pub type InodeId = u32;
/// The root directory.
pub const ROOT: InodeId = 0;
/// A removed child (tombstone).
const DEAD: InodeId = u32::MAX;
/// Symlinks followed while resolving one path (Linux's limit).
const MAX_LINKS: u32 = 40;
/// Longest name (EROFS_NAME_LEN, NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest symlink target (PATH_MAX - 1, what `symlinkat` accepts).
pub const MAX_LINK: usize = 4095;
/// Longest xattr value (EROFS stores its size in 16 bits).
pub const MAX_XATTR_VALUE: usize = 65535;

/// What an inode holds besides its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Regular file: `blocks` 4 KiB blocks from `blkaddr` hold `size` bytes.
    File {
        /// First block in the image (0 for an empty file).
        blkaddr: u32,
        /// Size in bytes.
        size: u64,
    },
    /// Directory: index into [`Tree::dirs`].
    Dir(u32),
    /// Symlink: its target in the name arena.
    Symlink {
        /// Arena offset.
        off: u32,
        /// Length.
        len: u32,
    },
    /// Character or block device (Linux `new_encode_dev` number).
    Device(u32),
    /// Fifo.
    Fifo,
}

/// One inode's attributes: 40 bytes, all 4-byte fields (an `i64` and a
/// `Body` enum would make it 48; every inode of an image is one of these).
#[derive(Debug, Clone, Copy)]
pub struct Inode {
    /// `st_mode` with the file type bits (which also say what `data` is).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in seconds, low and high halves.
    mtime: [u32; 2],
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// 1 + index into [`Tree::xattrs`], 0 for none.
    pub xattrs: u32,
    /// [`Body`], packed by [`Inode::new`].
    data: [u32; 3],
}

impl Inode {
    /// An inode; `mode`'s file type must match `body`.
    pub fn new(mode: u32, uid: u32, gid: u32, mtime: (i64, u32), xattrs: u32, body: Body) -> Inode {
        let data = match body {
            Body::File { blkaddr, size } => [blkaddr, size as u32, (size >> 32) as u32],
            Body::Dir(d) => [d, 0, 0],
            Body::Symlink { off, len } => [off, len, 0],
            Body::Device(rdev) => [rdev, 0, 0],
            Body::Fifo => [0; 3],
        };
        let mut i = Inode {
            mode,
            uid,
            gid,
            mtime: [0; 2],
            mtime_nsec: mtime.1,
            xattrs,
            data,
        };
        i.set_mtime(mtime.0);
        i
    }

    /// What the inode holds.
    pub fn body(&self) -> Body {
        let [a, b, c] = self.data;
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => Body::File {
                blkaddr: a,
                size: u64::from(b) | (u64::from(c) << 32),
            },
            libc::S_IFDIR => Body::Dir(a),
            libc::S_IFLNK => Body::Symlink { off: a, len: b },
            libc::S_IFCHR | libc::S_IFBLK => Body::Device(a),
            _ => Body::Fifo,
        }
    }

    /// Modification time, seconds.
    pub fn mtime(&self) -> i64 {
        (u64::from(self.mtime[0]) | (u64::from(self.mtime[1]) << 32)) as i64
    }

    fn set_mtime(&mut self, sec: i64) {
        self.mtime = [sec as u32, ((sec as u64) >> 32) as u32];
    }
}

/// A directory entry: name in the arena, and the inode it names.
#[derive(Debug, Clone, Copy)]
pub struct Child {
    /// Arena offset of the name.
    pub name_off: u32,
    /// Name length (1..=255).
    pub name_len: u32,
    /// The inode, or `DEAD`.
    pub inode: InodeId,
}

/// A directory's parent and children.
#[derive(Debug, Default)]
pub struct DirData {
    /// The parent directory (the root is its own parent).
    pub parent: InodeId,
    /// Children in insertion order (sorted by [`Tree::sort_dirs`]).
    pub children: Vec<Child>,
    /// Tombstones among `children`.
    dead: u32,
}

/// Extended attributes of one inode, as (full name, value).
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The merged tree.
#[derive(Debug)]
pub struct Tree {
    /// Every inode ever made (unreachable ones are dropped at serialization).
    pub inodes: Vec<Inode>,
    /// Directory contents, indexed by `Body::Dir`.
    pub dirs: Vec<DirData>,
    /// Names and symlink targets.
    pub arena: Vec<u8>,
    /// Extended attributes, indexed by `Inode::xattrs - 1`.
    pub xattrs: Vec<Xattrs>,
    /// Keyed hash of (directory inode, name) -> index in its children.
    index: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    hasher: RandomState,
    /// Two live names of one directory ever shared a hash: lookups that
    /// miss in `index` scan the directory.
    collided: bool,
    /// Time given to directories the tree makes itself.
    now: (i64, u32),
    /// Keep extended attributes from the layers.
    keep_xattrs: bool,
    /// Entries the layers may create in total.
    max_entries: u64,
    entries: u64,
}

/// Per-layer state: what the layer created (whiteouts never hide it) and
/// the directories it made opaque.
#[derive(Debug, Default)]
pub struct LayerState {
    created: Created,
    /// Opaque directories in the order their markers came.
    opaque: Vec<Vec<u8>>,
    opaque_seen: HashSet<Vec<u8>>,
    /// This layer's counters.
    pub stats: Stats,
}

fn os_err(path: &[u8], op: &'static str, errno: i32) -> Error {
    Error::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        op,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// Why a directory path could not be resolved.
enum Resolve {
    /// A component is neither a directory nor a symlink.
    NotDir,
    /// Too many symlinks, or too deep.
    Loop,
    /// A name longer than `MAX_NAME` had to be created, or the path is
    /// longer than `PATH_MAX`.
    NameTooLong,
    /// A dangling symlink still dangles after its target was made.
    Missing,
}

impl Resolve {
    fn errno(&self) -> i32 {
        match self {
            Resolve::NotDir => libc::ENOTDIR,
            Resolve::Loop => libc::ELOOP,
            Resolve::NameTooLong => libc::ENAMETOOLONG,
            Resolve::Missing => libc::ENOENT,
        }
    }
}

impl Tree {
    /// An empty tree: a root directory 0755 owned by 0:0 with time `now`.
    pub fn new(now: (i64, u32), keep_xattrs: bool, max_entries: u64) -> Tree {
        let mut t = Tree {
            inodes: Vec::new(),
            dirs: Vec::new(),
            arena: Vec::new(),
            xattrs: Vec::new(),
            index: HashMap::default(),
            hasher: RandomState::new(),
            collided: false,
            now,
            keep_xattrs,
            max_entries,
            entries: 0,
        };
        let root = t.new_dir(ROOT, 0o755, 0, 0, now);
        debug_assert_eq!(root, ROOT);
        t
    }

    /// The name of a child.
    pub fn name(&self, c: &Child) -> &[u8] {
        &self.arena[c.name_off as usize..(c.name_off + c.name_len) as usize]
    }

    /// A symlink's target.
    pub fn link_target(&self, off: u32, len: u32) -> &[u8] {
        &self.arena[off as usize..(off + len) as usize]
    }

    /// The directory data of `dir` (which must be a directory).
    pub fn dir(&self, dir: InodeId) -> &DirData {
        match self.inodes[dir as usize].body() {
            Body::Dir(d) => &self.dirs[d as usize],
            _ => unreachable!("inode {dir} is not a directory"),
        }
    }

    fn dir_mut(&mut self, dir: InodeId) -> &mut DirData {
        match self.inodes[dir as usize].body() {
            Body::Dir(d) => &mut self.dirs[d as usize],
            _ => unreachable!("inode {dir} is not a directory"),
        }
    }

    fn is_dir(&self, ino: InodeId) -> bool {
        matches!(self.inodes[ino as usize].body(), Body::Dir(_))
    }

    /// Bytes of heap the tree holds now (capacities, not lengths).
    pub fn memory_bytes(&self) -> u64 {
        use std::mem::size_of;
        let children: usize = self.dirs.iter().map(|d| d.children.capacity()).sum();
        let xattrs: usize = self
            .xattrs
            .iter()
            .flat_map(|x| x.iter().map(|(k, v)| k.capacity() + v.capacity() + 48))
            .sum();
        (self.inodes.capacity() * size_of::<Inode>()
            + self.dirs.capacity() * size_of::<DirData>()
            + children * size_of::<Child>()
            + self.arena.capacity()
            + self.xattrs.capacity() * size_of::<Xattrs>()
            + xattrs
            // hashbrown: key, value and one control byte per bucket.
            + self.index.capacity() * (size_of::<(u64, u32)>() + 1)) as u64
    }

    /// Counts one entry against the limit.
    fn count_entry(&mut self, path: &[u8]) -> Result<(), Error> {
        self.entries += 1;
        if self.entries > self.max_entries || self.inodes.len() >= DEAD as usize - 1 {
            return Err(Error::Limit {
                path: String::from_utf8_lossy(path).into_owned(),
                reason: format!("more than {} entries in the image", self.max_entries),
            });
        }
        Ok(())
    }

    fn add_inode(&mut self, inode: Inode, path: &[u8]) -> Result<InodeId, Error> {
        self.count_entry(path)?;
        self.inodes.push(inode);
        Ok((self.inodes.len() - 1) as InodeId)
    }

    fn new_dir(&mut self, parent: InodeId, mode: u32, uid: u32, gid: u32, t: (i64, u32)) -> u32 {
        self.dirs.push(DirData {
            parent,
            ..DirData::default()
        });
        self.inodes.push(Inode::new(
            libc::S_IFDIR | (mode & 0o7777),
            uid,
            gid,
            t,
            0,
            Body::Dir((self.dirs.len() - 1) as u32),
        ));
        (self.inodes.len() - 1) as InodeId
    }

    fn arena_push(&mut self, bytes: &[u8]) -> u32 {
        let off = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        off
    }

    /// The index key of `name` in `dir`: keyed per process, so a layer
    /// cannot aim for collisions (which only cost a directory scan).
    fn key(&self, dir: InodeId, name: &[u8]) -> u64 {
        self.hasher.hash_one((dir, name))
    }

    /// Index in `dir`'s children of the live child `name`.
    pub fn lookup(&self, dir: InodeId, name: &[u8]) -> Option<u32> {
        let d = self.dir(dir);
        if let Some(&i) = self.index.get(&self.key(dir, name)) {
            let c = &d.children[i as usize];
            if c.inode != DEAD && self.name(c) == name {
                return Some(i);
            }
        }
        if !self.collided {
            return None;
        }
        d.children
            .iter()
            .position(|c| c.inode != DEAD && self.name(c) == name)
            .map(|i| i as u32)
    }

    fn child_inode(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        self.lookup(dir, name)
            .map(|i| self.dir(dir).children[i as usize].inode)
    }

    /// Makes `name` in `dir` refer to `inode`, removing what was there.
    fn set_child(&mut self, dir: InodeId, name: &[u8], inode: InodeId) {
        if let Some(i) = self.lookup(dir, name) {
            let old = self.dir(dir).children[i as usize].inode;
            self.drop_subtree(old);
            self.dir_mut(dir).children[i as usize].inode = inode;
            return;
        }
        let name_off = self.arena_push(name);
        let h = self.key(dir, name);
        let d = self.dir_mut(dir);
        d.children.push(Child {
            name_off,
            name_len: name.len() as u32,
            inode,
        });
        let i = (d.children.len() - 1) as u32;
        if self.index.insert(h, i).is_some() {
            // A collision: the older name lost its entry; lookups that
            // miss scan the directory from now on.
            self.collided = true;
        }
    }

    /// Removes the child at index `i` of `dir`.
    fn remove_child(&mut self, dir: InodeId, i: u32) {
        let c = self.dir(dir).children[i as usize];
        self.drop_subtree(c.inode);
        // (After a collision this may drop another directory's entry of
        // the same key: lookups then scan, which stays correct.)
        let h = self.key(dir, self.name(&c));
        if self.index.get(&h) == Some(&i) {
            self.index.remove(&h);
        }
        let d = self.dir_mut(dir);
        d.children[i as usize].inode = DEAD;
        d.dead += 1;
        if d.dead > 32 && d.dead as usize * 2 > d.children.len() {
            self.compact(dir);
        }
    }

    /// Drops tombstones from `dir` and re-indexes its children.
    fn compact(&mut self, dir: InodeId) {
        let mut children = std::mem::take(&mut self.dir_mut(dir).children);
        for c in &children {
            self.index.remove(&self.key(dir, self.name(c)));
        }
        children.retain(|c| c.inode != DEAD);
        for (i, c) in children.iter().enumerate() {
            let h = self.key(dir, self.name(c));
            if self.index.insert(h, i as u32).is_some() {
                self.collided = true;
            }
        }
        let d = self.dir_mut(dir);
        d.children = children;
        d.dead = 0;
    }

    /// Forgets the contents of a removed directory (iteratively: trees
    /// may be deep). Other inodes stay (hard links may still name them).
    fn drop_subtree(&mut self, ino: InodeId) {
        let mut stack = vec![ino];
        while let Some(d) = stack.pop() {
            if !self.is_dir(d) {
                continue;
            }
            let children = std::mem::take(&mut self.dir_mut(d).children);
            for c in &children {
                self.index.remove(&self.key(d, self.name(c)));
                if c.inode != DEAD {
                    stack.push(c.inode);
                }
            }
        }
    }

    /// Resolves the directory `path` (cleaned), following symlinks as if
    /// the root were `/` (`openat2(RESOLVE_IN_ROOT)`). With `create`,
    /// missing directories are made 0755, through dangling symlinks too
    /// (see `create_dirs`); without, a missing one is `Ok(None)`.
    fn resolve_dir(&mut self, path: &[u8], create: bool) -> Result<Option<InodeId>, Resolve> {
        if path.len() > MAX_LINK {
            return Err(Resolve::NameTooLong);
        }
        match self.walk(ROOT, path)? {
            Some(d) => Ok(Some(d)),
            None if create => self.create_dirs(path, 0).map(Some),
            None => Ok(None),
        }
    }

    /// Resolves `path` from the directory `start`: symlinks followed
    /// (absolute ones from the root, at most `MAX_LINKS`), `..` to the
    /// parent (the root's is itself). `Ok(None)`: a component is missing.
    fn walk(&self, start: InodeId, path: &[u8]) -> Result<Option<InodeId>, Resolve> {
        let mut rest: Vec<u8>;
        let mut cur: &[u8] = path;
        let mut here = start;
        let mut links = 0;
        loop {
            let comp_end = cur.iter().position(|&b| b == b'/').unwrap_or(cur.len());
            let (comp, tail) = (&cur[..comp_end], &cur[(comp_end + 1).min(cur.len())..]);
            match comp {
                b"" | b"." => {}
                b".." => here = self.dir(here).parent,
                _ => {
                    let Some(next) = self.child_inode(here, comp) else {
                        return Ok(None);
                    };
                    match self.inodes[next as usize].body() {
                        Body::Dir(_) => here = next,
                        Body::Symlink { off, len } => {
                            links += 1;
                            if links > MAX_LINKS {
                                return Err(Resolve::Loop);
                            }
                            let target = self.link_target(off, len);
                            if target.starts_with(b"/") {
                                here = ROOT;
                            }
                            let mut joined = Vec::with_capacity(target.len() + 1 + tail.len());
                            joined.extend_from_slice(target);
                            joined.push(b'/');
                            joined.extend_from_slice(tail);
                            rest = joined;
                            cur = &rest;
                            continue;
                        }
                        _ => return Err(Resolve::NotDir),
                    }
                }
            }
            if comp_end >= cur.len() {
                return Ok(Some(here));
            }
            cur = tail;
        }
    }

    /// Makes every missing directory of `path` as the `Unpacker` does:
    /// component by component; a dangling symlink on the way has its
    /// target, taken lexically from the path so far, made first (like
    /// `mkdir -p` in a chroot), at most 40 levels deep.
    fn create_dirs(&mut self, path: &[u8], depth: u32) -> Result<InodeId, Resolve> {
        let mut cur = ROOT;
        let mut start = 0;
        for comp in path.split(|&b| b == b'/') {
            let parent_prefix = &path[..start];
            start += comp.len() + 1;
            // Resolving one more component from the previous prefix's
            // directory is resolving the whole prefix from the root.
            if let Some(d) = self.walk(cur, comp)? {
                cur = d;
                continue;
            }
            let link = match self.child_inode(cur, comp) {
                None => {
                    cur = self.make_parent(cur, comp)?;
                    continue;
                }
                Some(ino) => match self.inodes[ino as usize].body() {
                    Body::Symlink { off, len } => self.link_target(off, len).to_vec(),
                    _ => return Err(Resolve::NotDir),
                },
            };
            if depth >= MAX_LINKS {
                return Err(Resolve::Loop);
            }
            let mut t = if link.starts_with(b"/") {
                Vec::new()
            } else {
                parent_prefix.to_vec()
            };
            t.extend_from_slice(&link);
            let t = super::clean(&t);
            if !t.is_empty() {
                self.create_dirs(&t, depth + 1)?;
            }
            cur = self.walk(cur, comp)?.ok_or(Resolve::Missing)?;
        }
        Ok(cur)
    }

    /// A missing parent directory: 0755, root-owned, time of the build.
    fn make_parent(&mut self, dir: InodeId, name: &[u8]) -> Result<InodeId, Resolve> {
        if name.len() > MAX_NAME {
            return Err(Resolve::NameTooLong);
        }
        self.entries += 1;
        let d = self.new_dir(dir, 0o755, 0, 0, self.now);
        self.set_child(dir, name, d);
        Ok(d)
    }

    /// Resolves `path`'s directory for an entry, mapping failures to the
    /// `Unpacker`'s errors.
    fn parent_of(&mut self, e: &Entry, parent: &[u8]) -> Result<InodeId, Error> {
        match self.resolve_dir(parent, true) {
            Ok(Some(p)) => Ok(p),
            Ok(None) | Err(Resolve::NotDir) => Err(os_err(&e.path, "open parent", libc::ENOENT)),
            Err(r) => Err(os_err(&e.path, "create parent directories", r.errno())),
        }
    }

    /// Extended attributes of `e` the image can store (and the
    /// `Unpacker` would keep): known namespaces, no `user.*` on symlinks.
    fn entry_xattrs(&self, e: &Entry, symlink: bool) -> Result<Xattrs, Error> {
        if !self.keep_xattrs {
            return Ok(Vec::new());
        }
        let mut out: Xattrs = Vec::new();
        for (k, v) in &e.xattrs {
            check_nul(k, &e.path)?;
            if super::erofs::xattr_prefix(k).is_none() || (symlink && k.starts_with(b"user.")) {
                continue;
            }
            if v.len() > MAX_XATTR_VALUE {
                return Err(os_err(&e.path, "set xattr", libc::E2BIG));
            }
            out.retain(|(ok, _)| ok != k);
            out.push((k.clone(), v.clone()));
        }
        if super::erofs::xattr_body(&out).len() > super::erofs::MAX_XATTR_BODY {
            return Err(os_err(&e.path, "set xattr", libc::E2BIG));
        }
        Ok(out)
    }

    fn store_xattrs(&mut self, x: Xattrs) -> u32 {
        if x.is_empty() {
            return 0;
        }
        self.xattrs.push(x);
        self.xattrs.len() as u32
    }

    fn inode_for(&mut self, e: &Entry, mode: u32, body: Body) -> Result<InodeId, Error> {
        let symlink = matches!(body, Body::Symlink { .. });
        let x = self.entry_xattrs(e, symlink)?;
        let xattrs = self.store_xattrs(x);
        let t = (e.mtime, e.mtime_nsec);
        self.add_inode(Inode::new(mode, e.uid, e.gid, t, xattrs, body), &e.path)
    }

    /// Gives an existing directory an entry's owner, mode, time, and
    /// xattrs (added to the ones it has, as `setxattr` would; the chown
    /// before them drops `security.capability`).
    fn update_dir(&mut self, dir: InodeId, e: &Entry) -> Result<(), Error> {
        let new = self.entry_xattrs(e, false)?;
        let ino = &mut self.inodes[dir as usize];
        ino.mode = libc::S_IFDIR | (e.mode & 0o7777);
        ino.uid = e.uid;
        ino.gid = e.gid;
        ino.set_mtime(e.mtime);
        ino.mtime_nsec = e.mtime_nsec;
        let slot = ino.xattrs;
        if slot == 0 {
            self.inodes[dir as usize].xattrs = self.store_xattrs(new);
            return Ok(());
        }
        let x = &mut self.xattrs[slot as usize - 1];
        x.retain(|(k, _)| k != b"security.capability");
        for (k, v) in new {
            x.retain(|(ok, _)| *ok != k);
            x.push((k, v));
        }
        Ok(())
    }

    /// Applies one tar entry whose path cleaned to `path`. A regular
    /// file's data is already in the image: `file` = (blkaddr, size).
    pub fn apply(
        &mut self,
        e: &Entry,
        path: &[u8],
        file: Option<(u32, u64)>,
        layer: &mut LayerState,
    ) -> Result<(), Error> {
        let kind = e.kind.unwrap_or(Kind::File);
        if path.is_empty() {
            if kind == Kind::Dir {
                // The layer's "./": metadata of the root.
                return self.update_dir(ROOT, e);
            }
            return Err(Error::Unsafe {
                path: e.display(),
                reason: "entry resolves to the target root".into(),
            });
        }
        let (parent, name) = split(path);
        match whiteout::classify(name) {
            Whiteout::No => {}
            Whiteout::Meta => return Ok(()),
            Whiteout::Opaque => {
                if layer.opaque_seen.insert(parent.to_vec()) {
                    layer.opaque.push(parent.to_vec());
                }
                return Ok(());
            }
            Whiteout::Name(hidden) => return self.whiteout(e, parent, hidden, layer),
        }
        layer.created.insert(path);
        // Names go through C strings in the `Unpacker`: a NUL is an error.
        check_nul(path, &e.path)?;
        let p = self.parent_of(e, parent)?;
        if name.len() > MAX_NAME {
            return Err(os_err(&e.path, "create", libc::ENAMETOOLONG));
        }
        let new = match kind {
            Kind::Dir => {
                layer.stats.dirs += 1;
                return self.dir_entry(e, p, name);
            }
            Kind::HardLink => {
                layer.stats.hardlinks += 1;
                return self.hardlink(e, p, name, path);
            }
            _ => self.leaf_inode(e, kind, file, &mut layer.stats)?,
        };
        self.set_child(p, name, new);
        Ok(())
    }

    /// The new inode of a file, symlink, device or fifo entry.
    fn leaf_inode(
        &mut self,
        e: &Entry,
        kind: Kind,
        file: Option<(u32, u64)>,
        stats: &mut Stats,
    ) -> Result<InodeId, Error> {
        let perm = e.mode & 0o7777;
        let (mode, body) = match kind {
            Kind::Symlink => {
                check_nul(&e.link, &e.path)?;
                if e.link.is_empty() || e.link.len() > MAX_LINK {
                    let errno = if e.link.is_empty() {
                        libc::ENOENT
                    } else {
                        libc::ENAMETOOLONG
                    };
                    return Err(os_err(&e.path, "create", errno));
                }
                let off = self.arena_push(&e.link);
                stats.symlinks += 1;
                let len = e.link.len() as u32;
                (libc::S_IFLNK | 0o777, Body::Symlink { off, len })
            }
            Kind::Char | Kind::Block => {
                stats.nodes += 1;
                let fmt = if kind == Kind::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                (
                    fmt | perm,
                    Body::Device(encode_dev(e.dev_major, e.dev_minor)),
                )
            }
            Kind::Fifo => {
                stats.nodes += 1;
                (libc::S_IFIFO | perm, Body::Fifo)
            }
            _ => {
                let (blkaddr, size) = file.unwrap_or((0, 0));
                stats.files += 1;
                stats.data_bytes += size;
                (libc::S_IFREG | perm, Body::File { blkaddr, size })
            }
        };
        self.inode_for(e, mode, body)
    }

    /// A directory entry: an existing directory is kept and updated,
    /// anything else replaced.
    fn dir_entry(&mut self, e: &Entry, p: InodeId, name: &[u8]) -> Result<(), Error> {
        if let Some(existing) = self.child_inode(p, name) {
            if self.is_dir(existing) {
                return self.update_dir(existing, e);
            }
        }
        self.count_entry(&e.path)?;
        let d = self.new_dir(p, e.mode, e.uid, e.gid, (e.mtime, e.mtime_nsec));
        let x = self.entry_xattrs(e, false)?;
        self.inodes[d as usize].xattrs = self.store_xattrs(x);
        self.set_child(p, name, d);
        Ok(())
    }

    /// `.wh.<hidden>` in `parent`: removes `hidden` unless this layer
    /// made it.
    fn whiteout(
        &mut self,
        e: &Entry,
        parent: &[u8],
        hidden: &[u8],
        layer: &mut LayerState,
    ) -> Result<(), Error> {
        let mut victim = parent.to_vec();
        if !victim.is_empty() {
            victim.push(b'/');
        }
        victim.extend_from_slice(hidden);
        if layer.created.contains(&victim) {
            return Ok(());
        }
        check_nul(parent, &e.path)?;
        let p = match self.resolve_dir(parent, false) {
            Ok(Some(p)) => p,
            Ok(None) | Err(Resolve::NotDir) => return Ok(()),
            Err(r) => return Err(os_err(&e.path, "open parent", r.errno())),
        };
        check_nul(hidden, &e.path)?;
        if let Some(i) = self.lookup(p, hidden) {
            self.remove_child(p, i);
            layer.stats.whiteouts += 1;
        }
        Ok(())
    }

    /// A hard link `name` in `p` to the entry named by `e.link`.
    fn hardlink(&mut self, e: &Entry, p: InodeId, name: &[u8], path: &[u8]) -> Result<(), Error> {
        let target = super::clean(&e.link);
        if target.is_empty() {
            return Err(Error::Unsafe {
                path: e.display(),
                reason: "hard link to the target root".into(),
            });
        }
        if target == path {
            return Ok(()); // a link to itself: nothing to do
        }
        check_nul(&target, &e.path)?;
        let not_found = || Error::Unsafe {
            path: e.display(),
            reason: format!(
                "hard link target {} is not an entry inside the target",
                String::from_utf8_lossy(&e.link)
            ),
        };
        // As the `Unpacker`'s `linkat` after removing the existing name: a
        // target that was (or was inside) that name is gone.
        if let Some(i) = self.lookup(p, name) {
            self.remove_child(p, i);
        }
        let ino = self.resolve_target(&target).ok_or_else(not_found)?;
        if self.is_dir(ino) {
            return Err(os_err(&e.path, "create", libc::EPERM));
        }
        self.count_entry(&e.path)?;
        self.set_child(p, name, ino);
        Ok(())
    }

    /// The inode a hard link's (cleaned) target names: parent resolved,
    /// final component not followed.
    fn resolve_target(&mut self, target: &[u8]) -> Option<InodeId> {
        let (tparent, tname) = split(target);
        let tp = self.resolve_dir(tparent, false).ok()??;
        self.child_inode(tp, tname)
    }

    /// End of a layer: prunes the directories it made opaque.
    pub fn finish_layer(&mut self, layer: &mut LayerState) -> Result<(), Error> {
        for d in std::mem::take(&mut layer.opaque) {
            check_nul(&d, &d)?;
            if let Some(dir) = self.resolve_no_symlinks(&d) {
                self.prune(dir, &d, &layer.created);
                layer.stats.opaque_dirs += 1;
            }
        }
        Ok(())
    }

    /// The directory at `path`, every component a real directory.
    fn resolve_no_symlinks(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = self.child_inode(cur, comp)?;
            if !self.is_dir(cur) {
                return None;
            }
        }
        Some(cur)
    }

    /// Removes from `dir` (at `path`) everything `created` lacks.
    fn prune(&mut self, dir: InodeId, path: &[u8], created: &Created) {
        let mut stack = vec![(dir, path.to_vec())];
        while let Some((d, dpath)) = stack.pop() {
            let n = self.dir(d).children.len();
            for i in 0..n {
                let c = self.dir(d).children[i];
                if c.inode == DEAD {
                    continue;
                }
                let mut p = dpath.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(self.name(&c));
                if !created.contains(&p) {
                    self.remove_child(d, i as u32);
                    if self.dir(d).children.len() != n {
                        // Compacted: indices moved; start this dir over.
                        stack.push((d, dpath));
                        break;
                    }
                } else if self.is_dir(c.inode) {
                    stack.push((c.inode, p));
                }
            }
        }
    }

    /// Drops tombstones and sorts every directory's children by name
    /// bytes (EROFS lookups binary-search them).
    pub fn sort_dirs(&mut self) {
        let mut dirs = std::mem::take(&mut self.dirs);
        for d in &mut dirs {
            d.children.retain(|c| c.inode != DEAD);
            d.children
                .sort_unstable_by(|a, b| self.name(a).cmp(self.name(b)));
            d.dead = 0;
        }
        self.dirs = dirs;
        self.index = HashMap::default();
    }
}

/// A NUL inside a name, link target or xattr name: the error the
/// `Unpacker` gets from making a C string of it.
fn check_nul(bytes: &[u8], path: &[u8]) -> Result<(), Error> {
    if bytes.contains(&0) {
        return Err(Error::Io {
            path: String::from_utf8_lossy(path).into_owned(),
            op: "name",
            source: io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in name"),
        });
    }
    Ok(())
}

/// The index's keys are already keyed hashes: use them as they are.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (u64 keys); fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Linux's `new_encode_dev`: what EROFS stores in `i_u.rdev`.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind, link: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            link: link.as_bytes().to_vec(),
            kind: Some(kind),
            mode: 0o644,
            ..Entry::default()
        }
    }

    /// Every path with its kind and size, depth first in name order.
    fn listing(t: &mut Tree) -> Vec<String> {
        t.sort_dirs();
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((d, prefix)) = stack.pop() {
            for c in &t.dir(d).children {
                let p = format!("{prefix}/{}", String::from_utf8_lossy(t.name(c)));
                out.push(format!("{p} {:?}", t.inodes[c.inode as usize].body()));
                if t.is_dir(c.inode) {
                    stack.push((c.inode, p));
                }
            }
        }
        out
    }

    fn run(ops: &[(&str, Kind, &str)], break_index: bool) -> Vec<String> {
        let mut t = Tree::new((0, 0), true, 1 << 20);
        let mut layer = LayerState::default();
        for (i, (path, kind, link)) in ops.iter().enumerate() {
            let e = entry(path, *kind, link);
            let path = super::super::clean(&e.path);
            t.apply(&e, &path, Some((i as u32 + 1, 1)), &mut layer)
                .unwrap();
            if break_index {
                // As after a hash collision: every lookup must scan.
                t.index.clear();
                t.collided = true;
            }
        }
        t.finish_layer(&mut layer).unwrap();
        listing(&mut t)
    }

    /// Lookups stay right when the hash index cannot be trusted (the
    /// path taken after two names' keys collided).
    #[test]
    fn lookups_fall_back_to_scanning_after_a_collision() {
        let mut ops = vec![("d", Kind::Dir, ""), ("lower", Kind::File, "")];
        let names: Vec<String> = (0..100).map(|i| format!("d/f{i}")).collect();
        for n in &names {
            ops.push((n, Kind::File, ""));
        }
        for n in names.iter().step_by(3) {
            ops.push((n, Kind::Symlink, "lower")); // replace a third
        }
        ops.push(("d/h", Kind::HardLink, "d/f1"));
        ops.push(("d/f2", Kind::Dir, "")); // a file replaced by a directory
        ops.push(("d/f2/x", Kind::File, ""));
        let good = run(&ops, false);
        assert_eq!(good, run(&ops, true));
        assert_eq!(good.len(), 2 + 100 + 1 + 1);
    }

    /// The per-entry records stay small, and pack their fields losslessly.
    #[test]
    fn compact_records_round_trip() {
        assert_eq!(std::mem::size_of::<Inode>(), 40);
        assert_eq!(std::mem::size_of::<Child>(), 12);
        let body = Body::File {
            blkaddr: 7,
            size: (5 << 32) + 3,
        };
        let i = Inode::new(libc::S_IFREG | 0o644, 1, 2, (-86_400 * 365, 9), 0, body);
        assert_eq!(
            (i.body(), i.mtime(), i.mtime_nsec),
            (body, -86_400 * 365, 9)
        );
        let link = Body::Symlink { off: 3, len: 4 };
        assert_eq!(
            Inode::new(libc::S_IFLNK, 0, 0, (0, 0), 0, link).body(),
            link
        );
        let dev = Body::Device(encode_dev(8, 1));
        assert_eq!(Inode::new(libc::S_IFBLK, 0, 0, (0, 0), 0, dev).body(), dev);
        assert_eq!(
            Inode::new(libc::S_IFIFO, 0, 0, (0, 0), 0, Body::Fifo).body(),
            Body::Fifo
        );
    }

    /// Whiteouts of most of a big directory compact it; what is left and
    /// what comes back are found.
    #[test]
    fn tombstones_compact() {
        let mut t = Tree::new((0, 0), true, 1 << 20);
        let mut layer = LayerState::default();
        let add = |t: &mut Tree, layer: &mut LayerState, p: &str| {
            let e = entry(p, Kind::File, "");
            t.apply(&e, p.as_bytes(), Some((1, 1)), layer).unwrap();
        };
        for i in 0..200 {
            add(&mut t, &mut layer, &format!("d/f{i}"));
        }
        let mut upper = LayerState::default();
        for i in 0..190 {
            let e = entry(&format!("d/.wh.f{i}"), Kind::File, "");
            t.apply(&e, &e.path.clone(), None, &mut upper).unwrap();
        }
        let d = t.child_inode(ROOT, b"d").unwrap();
        assert!(t.dir(d).children.len() < 200, "compacted");
        assert_eq!(upper.stats.whiteouts, 190);
        for i in 0..200 {
            assert_eq!(
                t.child_inode(d, format!("f{i}").as_bytes()).is_some(),
                i >= 190
            );
        }
        add(&mut t, &mut upper, "d/f5");
        assert!(t.child_inode(d, b"f5").is_some());
    }
}
