//! Serializing the merged [`Tree`] as an uncompressed EROFS image, the
//! format Linux 6.1's `fs/erofs` mounts (`erofs_fs.h`).
//!
//! Layout, in write order (the output is written front to back, except
//! the superblock last):
//!
//! - block 0: the superblock at byte 1024;
//! - file data, written while the layers streamed by (`image.rs`);
//! - directory and symlink blocks that do not fit inline;
//! - the metadata area (`meta_blkaddr`): every inode, root first (so
//!   `root_nid` is 0), each an *extended* 64-byte inode (32-bit ids,
//!   own mtime with nanoseconds, 64-bit size) followed by its inline
//!   xattrs and, for small directories and symlinks, their contents
//!   (`FLAT_INLINE`), never crossing a block boundary.

use super::tree::{Body, InodeId, Tree, Xattrs, ROOT};
use super::Error;

/// Block size (`blkszbits` 12; the guest's page size, which 6.1 requires).
pub const BLOCK: u64 = 4096;
const BLOCK_BITS: u8 = 12;
const SUPER_OFFSET: u64 = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
/// `EROFS_FEATURE_COMPAT_MTIME`: inodes carry their own mtime.
const FEATURE_COMPAT_MTIME: u32 = 0x2;
const INODE_SIZE: usize = 64;
const SLOT: u64 = 32;
const DIRENT: usize = 12;
const LAYOUT_EXTENDED: u16 = 1;
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
const XATTR_HEADER: usize = 12;
/// Largest inline xattr body `i_xattr_icount` (16 bits, in 4-byte units
/// after the header) can describe.
pub const MAX_XATTR_BODY: usize = XATTR_HEADER + 4 * (u16::MAX as usize - 1);
/// Volume label in the superblock.
pub const VOLUME_NAME: &[u8] = b"hull-rootfs";

/// Where written bytes go: `(offset, bytes)`.
pub type Write<'a> = dyn FnMut(u64, &[u8]) -> Result<(), Error> + 'a;

/// The xattr name index and the name's remainder (`erofs_xattr_entry`).
/// `None` for namespaces EROFS cannot store (the `Unpacker` skips them
/// on ext4 too).
pub fn xattr_prefix(name: &[u8]) -> Option<(u8, &[u8])> {
    const PREFIXES: [(&[u8], u8); 3] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];
    match name {
        b"system.posix_acl_access" => return Some((2, b"")),
        b"system.posix_acl_default" => return Some((3, b"")),
        _ => {}
    }
    PREFIXES.iter().find_map(|(p, i)| {
        name.strip_prefix(*p)
            .filter(|rest| !rest.is_empty() && rest.len() <= 255)
            .map(|rest| (*i, rest))
    })
}

/// The inline xattr body: `erofs_xattr_ibody_header` then 4-byte aligned
/// `erofs_xattr_entry`s. Empty when there are none.
pub fn xattr_body(x: &Xattrs) -> Vec<u8> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut b = vec![0u8; XATTR_HEADER]; // h_reserved, h_shared_count 0
    for (name, value) in x {
        let Some((index, rest)) = xattr_prefix(name) else {
            continue;
        };
        b.push(rest.len() as u8);
        b.push(index);
        b.extend_from_slice(&(value.len() as u16).to_le_bytes());
        b.extend_from_slice(rest);
        b.extend_from_slice(value);
        b.resize(b.len().next_multiple_of(4), 0);
    }
    b
}

/// `i_xattr_icount` for a body of `len` bytes (`erofs_xattr_ibody_size`
/// inverted).
fn xattr_icount(len: usize) -> Result<u16, Error> {
    if len == 0 {
        return Ok(0);
    }
    u16::try_from((len - XATTR_HEADER) / 4 + 1).map_err(|_| Error::Limit {
        path: "image".into(),
        reason: format!("{len} bytes of xattrs on one inode"),
    })
}

/// How one directory's entries fall into blocks: the index of the first
/// entry of each block, and the bytes used in the last one. `name_lens`
/// are in name order.
pub fn dirent_blocks(name_lens: impl Iterator<Item = usize>) -> (Vec<usize>, usize) {
    let mut starts = vec![0];
    let mut used = 0;
    for (i, len) in name_lens.enumerate() {
        if used + DIRENT + len > BLOCK as usize {
            starts.push(i);
            used = 0;
        }
        used += DIRENT + len;
    }
    (starts, used)
}

/// One entry of a directory block.
pub struct Dirent<'a> {
    /// Name bytes.
    pub name: &'a [u8],
    /// Node number.
    pub nid: u64,
    /// `FT_*` file type.
    pub file_type: u8,
}

/// A directory's contents: full blocks, the last one only as long as
/// used (the kernel takes the last name's end from `i_size`).
pub fn dir_content(entries: &[Dirent<'_>], out: &mut Vec<u8>) {
    out.clear();
    let (starts, _) = dirent_blocks(entries.iter().map(|d| d.name.len()));
    for (b, &start) in starts.iter().enumerate() {
        let end = starts.get(b + 1).copied().unwrap_or(entries.len());
        let block = &entries[start..end];
        let base = out.len();
        let mut nameoff = DIRENT * block.len();
        for d in block {
            out.extend_from_slice(&d.nid.to_le_bytes());
            out.extend_from_slice(&(nameoff as u16).to_le_bytes());
            out.push(d.file_type);
            out.push(0);
            nameoff += d.name.len();
        }
        for d in block {
            out.extend_from_slice(d.name);
        }
        if end < entries.len() {
            out.resize(base + BLOCK as usize, 0);
        }
    }
}

/// `FT_*` of a mode.
fn file_type(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 1,
        libc::S_IFDIR => 2,
        libc::S_IFCHR => 3,
        libc::S_IFBLK => 4,
        libc::S_IFIFO => 5,
        libc::S_IFSOCK => 6,
        libc::S_IFLNK => 7,
        _ => 0,
    }
}

/// Where one reachable inode goes.
#[derive(Debug, Clone, Copy, Default)]
struct Place {
    ino: InodeId,
    /// `i_size`.
    size: u64,
    /// Inline xattr body length.
    xattr_len: u32,
    /// Bytes of content after the inode (FLAT_INLINE), else 0.
    inline_len: u32,
    /// First block of the content not inline (or of a file's data).
    blkaddr: u32,
    /// Content blocks written at finish (directories, long symlinks).
    own_blocks: u32,
    inline: bool,
}

/// What `write` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Image length in bytes (a multiple of [`BLOCK`]).
    pub len: u64,
    /// Inodes in the image.
    pub inodes: u64,
    /// Bytes of file data blocks no inode refers to (replaced or removed
    /// by later entries).
    pub unreferenced_bytes: u64,
}

/// Superblock settings.
#[derive(Debug, Clone, Copy)]
pub struct SuperInfo {
    /// `build_time`, `build_time_nsec`.
    pub build_time: (i64, u32),
    /// Volume UUID.
    pub uuid: [u8; 16],
}

/// Serializer state.
struct Serializer<'t> {
    tree: &'t Tree,
    /// Reachable inodes, root first, each once.
    order: Vec<InodeId>,
    /// Per inode id: link count (0 = unreachable).
    nlink: Vec<u32>,
    /// Per inode id: index in `order`, `u32::MAX` if unreachable.
    slot: Vec<u32>,
    places: Vec<Place>,
    /// Per `order` index: nid.
    nids: Vec<u64>,
}

/// Writes the tree's directories, symlinks and inodes after file data
/// that ends before block `data_end`, then the superblock. `tree` must
/// have been through [`Tree::sort_dirs`].
pub fn write(
    tree: &Tree,
    data_end: u32,
    info: SuperInfo,
    write: &mut Write<'_>,
) -> Result<Written, Error> {
    let mut s = Serializer::walk(tree);
    let meta_blkaddr = s.place(data_end)?;
    let meta_len = s.assign_nids();
    let mut buf = Vec::new();
    s.write_blocks(write, &mut buf)?;
    s.write_meta(meta_blkaddr, write, &mut buf)?;
    let blocks = u64::from(meta_blkaddr) + meta_len.div_ceil(BLOCK);
    let blocks32 = u32::try_from(blocks).map_err(|_| Error::Limit {
        path: "image".into(),
        reason: "image larger than 16 TiB".into(),
    })?;
    let sb = superblock(&info, s.order.len() as u64, blocks32, meta_blkaddr);
    write(0, &sb)?;
    let used: u64 = s
        .places
        .iter()
        .filter_map(|p| match tree.inodes[p.ino as usize].body() {
            Body::File { size, .. } => Some(size.div_ceil(BLOCK) * BLOCK),
            _ => None,
        })
        .sum();
    Ok(Written {
        len: blocks * BLOCK,
        inodes: s.order.len() as u64,
        unreferenced_bytes: (u64::from(data_end) - 1) * BLOCK - used,
    })
}

/// Block 0: zeros with the superblock at byte 1024.
fn superblock(info: &SuperInfo, inos: u64, blocks: u32, meta_blkaddr: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    let sb = &mut b[SUPER_OFFSET as usize..SUPER_OFFSET as usize + 128];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    // checksum (4..8) stays 0: EROFS_FEATURE_COMPAT_SB_CHKSUM is not set.
    sb[8..12].copy_from_slice(&FEATURE_COMPAT_MTIME.to_le_bytes());
    sb[12] = BLOCK_BITS;
    sb[13] = 0; // sb_extslots
    sb[14..16].copy_from_slice(&0u16.to_le_bytes()); // root_nid: root is first
    sb[16..24].copy_from_slice(&inos.to_le_bytes());
    sb[24..32].copy_from_slice(&(info.build_time.0 as u64).to_le_bytes());
    sb[32..36].copy_from_slice(&info.build_time.1.to_le_bytes());
    sb[36..40].copy_from_slice(&blocks.to_le_bytes());
    sb[40..44].copy_from_slice(&meta_blkaddr.to_le_bytes());
    // xattr_blkaddr (44..48) 0: no shared xattrs.
    sb[48..64].copy_from_slice(&info.uuid);
    sb[64..64 + VOLUME_NAME.len()].copy_from_slice(VOLUME_NAME);
    // feature_incompat, compression, devices, dirblkbits, packed_nid: 0.
    b
}

impl<'t> Serializer<'t> {
    /// Finds every reachable inode (breadth first from the root) and
    /// counts links: directories 2 + subdirectories, others their names.
    fn walk(tree: &'t Tree) -> Serializer<'t> {
        let n = tree.inodes.len();
        let mut s = Serializer {
            tree,
            order: vec![ROOT],
            nlink: vec![0; n],
            slot: vec![u32::MAX; n],
            places: Vec::new(),
            nids: Vec::new(),
        };
        s.slot[ROOT as usize] = 0;
        s.nlink[ROOT as usize] = 2;
        let mut next = 0;
        while next < s.order.len() {
            let ino = s.order[next];
            next += 1;
            if !matches!(tree.inodes[ino as usize].body(), Body::Dir(_)) {
                continue;
            }
            for c in &tree.dir(ino).children {
                let child = c.inode as usize;
                if matches!(tree.inodes[child].body(), Body::Dir(_)) {
                    s.nlink[ino as usize] += 1;
                    s.nlink[child] = 2;
                } else {
                    s.nlink[child] += 1;
                }
                if s.slot[child] == u32::MAX {
                    s.slot[child] = s.order.len() as u32;
                    s.order.push(c.inode);
                }
            }
        }
        s
    }

    /// A directory's entries in name order, "." and ".." included.
    fn dirents(&self, dir: InodeId) -> Vec<Dirent<'t>> {
        let tree = self.tree;
        let d = tree.dir(dir);
        let mut v: Vec<Dirent<'t>> = Vec::with_capacity(d.children.len() + 2);
        for c in &d.children {
            let ino = &tree.inodes[c.inode as usize];
            v.push(Dirent {
                name: tree.name(c),
                nid: self.nid_of(c.inode),
                file_type: file_type(ino.mode),
            });
        }
        for (name, ino) in [(&b"."[..], dir), (&b".."[..], d.parent)] {
            let at = v.partition_point(|e| e.name < name);
            v.insert(
                at,
                Dirent {
                    name,
                    nid: self.nid_of(ino),
                    file_type: 2,
                },
            );
        }
        v
    }

    fn nid_of(&self, ino: InodeId) -> u64 {
        self.nids
            .get(self.slot[ino as usize] as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Sizes, inline decisions and content blocks (allocated from block
    /// `data_end` on). Returns the first block of the metadata area.
    fn place(&mut self, data_end: u32) -> Result<u32, Error> {
        let mut cursor = u64::from(data_end);
        for &ino in &self.order {
            let inode = &self.tree.inodes[ino as usize];
            let xattr_len = match inode.xattrs {
                0 => 0,
                i => xattr_body(&self.tree.xattrs[i as usize - 1]).len(),
            };
            xattr_icount(xattr_len)?;
            let mut p = Place {
                ino,
                xattr_len: xattr_len as u32,
                ..Place::default()
            };
            let content_len = match inode.body() {
                Body::File { blkaddr, size } => {
                    p.size = size;
                    p.blkaddr = blkaddr;
                    None
                }
                Body::Dir(_) => Some(self.dir_size(ino)),
                Body::Symlink { len, .. } => Some(u64::from(len)),
                Body::Device(_) | Body::Fifo => None,
            };
            if let Some(len) = content_len {
                p.size = len;
                let tail = len % BLOCK;
                p.inline = tail != 0 && INODE_SIZE as u64 + u64::from(p.xattr_len) + tail <= BLOCK;
                p.inline_len = if p.inline { tail as u32 } else { 0 };
                p.own_blocks = ((len - u64::from(p.inline_len)) / BLOCK
                    + u64::from(!p.inline && tail != 0)) as u32;
                p.blkaddr = if p.own_blocks > 0 { cursor as u32 } else { 0 };
                cursor += u64::from(p.own_blocks);
            }
            self.places.push(p);
        }
        u32::try_from(cursor).map_err(|_| Error::Limit {
            path: "image".into(),
            reason: "image larger than 16 TiB".into(),
        })
    }

    /// `i_size` of a directory: the dirents' block split by name order
    /// (nids are not known yet; only the names matter here).
    fn dir_size(&self, dir: InodeId) -> u64 {
        let entries = self.dirents(dir);
        let (starts, last) = dirent_blocks(entries.iter().map(|e| e.name.len()));
        (starts.len() as u64 - 1) * BLOCK + last as u64
    }

    /// Nids: 32-byte slots in the metadata area; an inode with its xattrs
    /// and inline content starts a new block rather than cross one.
    /// Returns the metadata area's length.
    fn assign_nids(&mut self) -> u64 {
        let mut off = 0u64;
        for p in &self.places {
            let record = INODE_SIZE as u64 + u64::from(p.xattr_len) + u64::from(p.inline_len);
            if record <= BLOCK && off % BLOCK + record > BLOCK {
                off = off.next_multiple_of(BLOCK);
            }
            self.nids.push(off / SLOT);
            off += record.next_multiple_of(SLOT);
        }
        off
    }

    /// The content of a directory or symlink (`buf` reused).
    fn content(&self, p: &Place, buf: &mut Vec<u8>) {
        match self.tree.inodes[p.ino as usize].body() {
            Body::Dir(_) => dir_content(&self.dirents(p.ino), buf),
            Body::Symlink { off, len } => {
                buf.clear();
                buf.extend_from_slice(self.tree.link_target(off, len));
            }
            _ => buf.clear(),
        }
    }

    /// Directory and symlink blocks that are not inline, in block order.
    fn write_blocks(&self, write: &mut Write<'_>, buf: &mut Vec<u8>) -> Result<(), Error> {
        for p in self.places.iter().filter(|p| p.own_blocks > 0) {
            self.content(p, buf);
            buf.truncate(buf.len() - p.inline_len as usize);
            buf.resize(p.own_blocks as usize * BLOCK as usize, 0);
            write(u64::from(p.blkaddr) * BLOCK, buf)?;
        }
        Ok(())
    }

    /// The metadata area: inodes, xattrs, inline content; written in
    /// chunks of up to 64 KiB.
    fn write_meta(
        &self,
        meta_blkaddr: u32,
        write: &mut Write<'_>,
        content: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let base = u64::from(meta_blkaddr) * BLOCK;
        let mut chunk: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut chunk_off = 0u64; // offset of `chunk` in the meta area
        for (i, p) in self.places.iter().enumerate() {
            let off = self.nids[i] * SLOT;
            if chunk.len() >= 60 << 10 {
                write(base + chunk_off, &chunk)?;
                chunk_off += chunk.len() as u64;
                chunk.clear();
            }
            chunk.resize((off - chunk_off) as usize, 0);
            chunk.extend_from_slice(&self.inode_bytes(i, p)?);
            if p.inline {
                self.content(p, content);
                chunk.extend_from_slice(&content[content.len() - p.inline_len as usize..]);
            }
        }
        chunk.resize(chunk.len().next_multiple_of(BLOCK as usize), 0);
        write(base + chunk_off, &chunk)
    }

    /// The 64-byte `erofs_inode_extended` and its xattr body.
    fn inode_bytes(&self, i: usize, p: &Place) -> Result<Vec<u8>, Error> {
        let ino = &self.tree.inodes[p.ino as usize];
        let xattrs = match ino.xattrs {
            0 => Vec::new(),
            x => xattr_body(&self.tree.xattrs[x as usize - 1]),
        };
        let layout = if p.inline { FLAT_INLINE } else { FLAT_PLAIN };
        let i_u = match ino.body() {
            Body::Device(rdev) => rdev,
            Body::Fifo => 0,
            _ => p.blkaddr,
        };
        let mut b = Vec::with_capacity(INODE_SIZE + xattrs.len());
        b.extend_from_slice(&(LAYOUT_EXTENDED | (layout << 1)).to_le_bytes()); // i_format
        b.extend_from_slice(&xattr_icount(xattrs.len())?.to_le_bytes());
        b.extend_from_slice(&(ino.mode as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // i_reserved
        b.extend_from_slice(&p.size.to_le_bytes());
        b.extend_from_slice(&i_u.to_le_bytes());
        b.extend_from_slice(&(i as u32 + 1).to_le_bytes()); // i_ino (32-bit stat)
        b.extend_from_slice(&ino.uid.to_le_bytes());
        b.extend_from_slice(&ino.gid.to_le_bytes());
        b.extend_from_slice(&(ino.mtime() as u64).to_le_bytes());
        b.extend_from_slice(&ino.mtime_nsec.to_le_bytes());
        b.extend_from_slice(&self.nlink[p.ino as usize].to_le_bytes());
        b.resize(INODE_SIZE, 0); // i_reserved2
        b.extend_from_slice(&xattrs);
        Ok(b)
    }
}
