//! Reading a tar stream into a [`LayerBuilder`], one entry at a time.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::rc::Rc;

use ::tar::{Archive, Entry, EntryType};

use super::pax;
use super::source::{self, SourceFailed, Tap, TapState};
use crate::error::{Error, Result};
use crate::ingest::{LayerBuilder, LayerSummary};
use crate::progress::Progress;
use crate::records::{Content, Ino, Node, NodeKind, Timestamp, Xattr, NAME_MAX, ROOT_INO};
use crate::store::Store;

const BLOCK: u64 = 512;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const AUFS_PREFIX: &[u8] = b".wh..wh.";

/// See [`super::import_tar`].
pub(crate) fn import(
    store: &Store,
    input: &mut dyn Read,
    progress: &dyn Progress,
) -> Result<LayerSummary> {
    let failed = SourceFailed::default();
    let result = import_inner(store, input, progress, &failed);
    match (result, failed.get()) {
        // The reader itself failed: whatever the tar layer made of it, it is I/O.
        (Err(_), Some(source_error)) => Err(Error::io("reading the archive", source_error)),
        (result, _) => result,
    }
}

fn import_inner(
    store: &Store,
    input: &mut dyn Read,
    progress: &dyn Progress,
    failed: &SourceFailed,
) -> Result<LayerSummary> {
    let stream = source::open(input, failed)?;
    let (tap, state) = Tap::new(stream);
    let mut builder = store.layer_builder()?;
    let mut importer = Importer {
        builder: &mut builder,
        progress,
        dirs: HashMap::from([(Vec::new(), ROOT_INO)]),
        root_seen: false,
    };
    // On error the builder is dropped unfinished: its `Building` layer is
    // never referenced and the next open removes it.
    importer.read_archive(tap, &state)?;
    builder.finish()
}

/// "truncated or corrupt archive" with the reader's explanation (control
/// and non-ASCII characters escaped, so the message stays one clean line).
fn corrupt(e: impl std::fmt::Display) -> Error {
    let why: String = e.to_string().escape_default().collect();
    Error::BadInput(format!("truncated or corrupt archive: {why}"))
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn bad_entry(path: &[u8], why: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("entry {:?}: {why}", lossy(path)))
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Everything an entry says about the node it describes.
struct Meta {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    kind: EntryType,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    atime: Timestamp,
    mtime: Timestamp,
    ctime: Timestamp,
    rdev: u64,
    xattrs: Vec<Xattr>,
    opaque: bool,
}

impl Meta {
    fn read<R: Read>(entry: &Entry<'_, R>, pax_data: Option<&[u8]>) -> Result<Meta> {
        let header = entry.header();
        let kind = header.entry_type();
        let mut path = entry.path_bytes().into_owned();
        let mut link = entry.link_name_bytes().map(|l| l.into_owned());
        let old = header.as_old();
        // A field left blank (all NUL or spaces, as some writers do) reads as 0.
        let field = |raw: &[u8], r: io::Result<u64>| {
            if raw.iter().all(|&b| b == 0 || b == b' ') {
                return Ok(0);
            }
            r.map_err(|e| bad_entry(&path, format!("bad header: {e}")))
        };
        let mode = field(&old.mode, header.mode().map(u64::from))? as u32 & 0o7777;
        let mut uid = field(&old.uid, header.uid())?;
        let mut gid = field(&old.gid, header.gid())?;
        let secs = field(&old.mtime, header.mtime())?;
        let mtime = Timestamp {
            sec: i64::try_from(secs).map_err(|_| bad_entry(&path, "mtime out of range"))?,
            nsec: 0,
        };
        let mut meta = Meta {
            link: None,
            kind,
            size: entry.size(),
            mode,
            uid: 0,
            gid: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            rdev: 0,
            xattrs: Vec::new(),
            opaque: false,
            path: Vec::new(),
        };
        let mut times = [None, None, None]; // atime, mtime, ctime from PAX
        let mut xattrs = BTreeMap::new();
        let mut selinux = None;
        let records = match pax_data {
            Some(data) => pax::parse_records(data).map_err(|e| bad_entry(&path, e))?,
            None => Vec::new(),
        };
        for (key, value) in records {
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad_entry(&path, format!("bad PAX {}", lossy(key))))
            };
            let time = || {
                pax::parse_time(value)
                    .ok_or_else(|| bad_entry(&path, format!("bad PAX {}", lossy(key))))
            };
            match key {
                b"path" => path = value.to_vec(),
                b"linkpath" => link = Some(value.to_vec()),
                b"uid" => uid = number()?,
                b"gid" => gid = number()?,
                b"atime" => times[0] = Some(time()?),
                b"mtime" => times[1] = Some(time()?),
                b"ctime" => times[2] = Some(time()?),
                b"size" => {
                    let declared = number()?;
                    if kind != EntryType::GNUSparse && declared != entry.size() {
                        return Err(corrupt(format!(
                            "entry {:?}: PAX size disagrees",
                            lossy(&path)
                        )));
                    }
                }
                b"RHT.security.selinux" => selinux = Some(value.to_vec()),
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(bad_entry(
                        &path,
                        "PAX-format sparse files (GNU.sparse.*) are not supported",
                    ));
                }
                k if k.starts_with(pax::XATTR_PREFIX) => {
                    let name = pax::xattr_name(&k[pax::XATTR_PREFIX.len()..]);
                    if name.is_empty() || name.contains(&0) {
                        return Err(bad_entry(&path, "xattr with an empty name or a NUL in it"));
                    }
                    xattrs.insert(name, value.to_vec());
                }
                _ => {} // charset, comment, uname, gname, SCHILY.acl, LIBARCHIVE.* …
            }
        }
        if let Some(label) = selinux {
            xattrs.entry(b"security.selinux".to_vec()).or_insert(label);
        }
        meta.mtime = times[1].unwrap_or(mtime);
        meta.atime = times[0].unwrap_or(meta.mtime);
        meta.ctime = times[2].unwrap_or(meta.mtime);
        meta.uid = u32::try_from(uid).map_err(|_| bad_entry(&path, "uid out of range"))?;
        meta.gid = u32::try_from(gid).map_err(|_| bad_entry(&path, "gid out of range"))?;
        for (name, value) in xattrs {
            if is_overlay_xattr(&name) {
                meta.opaque |= name.ends_with(b".overlay.opaque") && value == b"y";
            } else {
                meta.xattrs.push(Xattr { name, value });
            }
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            let major = header
                .device_major()
                .map_err(|e| bad_entry(&path, e))?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(|e| bad_entry(&path, e))?
                .unwrap_or(0);
            meta.rdev = libc::makedev(major, minor);
        }
        meta.path = path;
        meta.link = link;
        Ok(meta)
    }

    /// A node of `kind` with this entry's metadata, no content.
    fn node(&self, kind: NodeKind) -> Node {
        Node {
            kind,
            mode: if kind == NodeKind::Whiteout {
                0
            } else {
                self.mode
            },
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            size: 0,
            rdev: if kind == NodeKind::Whiteout {
                0
            } else {
                self.rdev
            },
            nlink: if kind == NodeKind::Dir { 2 } else { 1 },
            content: Content::Empty,
            xattrs: self.xattrs.clone(),
            opaque: false,
        }
    }

    /// A directory made because an entry needs it as a parent: 0755, root-owned,
    /// with the times of that entry (deterministic, unlike "now").
    fn implicit_dir(&self) -> Node {
        Node {
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
            ..self.node(NodeKind::Dir)
        }
    }
}

/// Overlayfs-internal xattrs are never stored (the opaque one becomes the flag).
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// The PAX records among the header blocks read just before an entry.
/// `blocks` starts at stream position `start`; the entry's own header is at `header_pos`.
fn pax_data(blocks: &[u8], start: u64, header_pos: u64) -> Result<Option<&[u8]>> {
    let inconsistent = || corrupt("inconsistent extended headers");
    let end = header_pos.checked_sub(start).ok_or_else(inconsistent)?;
    let mut at = round_up(start) - start;
    let mut found = None;
    while at < end {
        let from = at as usize;
        let block = blocks
            .get(from..from + BLOCK as usize)
            .ok_or_else(inconsistent)?;
        let size = ::tar::Header::from_byte_slice(block)
            .entry_size()
            .map_err(corrupt)?;
        // `at` is within `blocks` (at most MAX_HEADER_BYTES); `size` is untrusted.
        let data_end = size.checked_add(at + BLOCK).ok_or_else(inconsistent)?;
        let next = size
            .checked_add(BLOCK - 1)
            .map(|n| n / BLOCK * BLOCK)
            .and_then(|n| n.checked_add(at + BLOCK))
            .ok_or_else(inconsistent)?;
        if block[156] == b'x' {
            let data = usize::try_from(data_end)
                .ok()
                .and_then(|end| blocks.get(from + BLOCK as usize..end));
            found = Some(data.ok_or_else(inconsistent)?);
        }
        at = next;
    }
    if at != end {
        return Err(inconsistent());
    }
    Ok(found)
}

/// Reads an entry's data, counting it and keeping the first read error
/// (a read error here means the archive is cut or corrupt).
struct EntryData<'e, R: Read> {
    entry: &'e mut R,
    count: u64,
    error: Option<String>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.entry.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.error.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }
}

impl<R: Read> EntryData<'_, R> {
    /// Reads what is left, then checks that the declared size was all there.
    fn finish(&mut self, meta: &Meta) -> Result<()> {
        io::copy(self, &mut io::sink()).map_err(corrupt)?;
        if self.count != meta.size {
            return Err(corrupt(format!(
                "entry {:?} has {} of its {} bytes",
                lossy(&meta.path),
                self.count,
                meta.size
            )));
        }
        Ok(())
    }

    /// The error to report when a builder call that read this entry failed.
    fn explain(&self, e: Error) -> Error {
        match &self.error {
            Some(read_error) => corrupt(read_error),
            None => e,
        }
    }
}

struct Importer<'b, 's> {
    builder: &'b mut LayerBuilder<'s>,
    progress: &'b dyn Progress,
    /// Every directory made so far, by normalized path ("" is the root).
    /// Bounded by the number of directories, not of entries.
    dirs: HashMap<Vec<u8>, Ino>,
    /// Whether the root's metadata has been set (by `./` or implicitly).
    root_seen: bool,
}

impl Importer<'_, '_> {
    fn read_archive(&mut self, tap: Tap<'_>, state: &Rc<RefCell<TapState>>) -> Result<()> {
        let mut archive = Archive::new(tap);
        let mut entries = archive.entries().map_err(corrupt)?;
        let mut first = true;
        loop {
            state.borrow_mut().record();
            let next = entries.next();
            let (blocks, start) = {
                let mut st = state.borrow_mut();
                (st.take(), st.record_start)
            };
            let mut entry = match next {
                None => break,
                Some(Err(e)) if first => {
                    return Err(corrupt(format!(
                        "no valid header at the start (is it a tar, tar.gz or tar.zst file?): {e}"
                    )))
                }
                Some(Err(e)) => return Err(corrupt(e)),
                Some(Ok(entry)) => entry,
            };
            first = false;
            let meta = Meta::read(
                &entry,
                pax_data(&blocks, start, entry.raw_header_position())?,
            )?;
            drop(blocks);
            let mut data = EntryData {
                entry: &mut entry,
                count: 0,
                error: None,
            };
            self.entry(&meta, &mut data)?;
            data.finish(&meta)?;
            self.progress.advance(meta.size, 1);
        }
        if state.borrow().eof {
            return Err(corrupt("the stream ends before the end-of-archive marker"));
        }
        // Read to the end so that the decompressor checks its trailer.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt)?;
        Ok(())
    }

    /// Stores one entry.
    fn entry<R: Read>(&mut self, meta: &Meta, data: &mut EntryData<'_, R>) -> Result<()> {
        let kind = meta.kind;
        if kind == EntryType::XGlobalHeader {
            return Ok(()); // global PAX defaults (e.g. git's commit comment): ignored
        }
        check_type(meta)?;
        let is_dir =
            kind == EntryType::Directory || (is_regular(kind) && meta.path.ends_with(b"/"));
        let comps = components(&meta.path)?;
        if !self.root_seen {
            self.root_seen = true;
            if !(comps.is_empty() && is_dir) {
                self.builder.set_root(meta.implicit_dir())?;
            }
        }
        let Some((&name, parents)) = comps.split_last() else {
            if !is_dir {
                return Err(bad_entry(
                    &meta.path,
                    "names the archive root but is not a directory",
                ));
            }
            return self.update_dir(ROOT_INO, meta);
        };
        if name == OPAQUE_MARKER {
            self.refuse_dir(meta, is_dir)?;
            let parent = self.parent(meta, parents)?;
            return self.set_opaque(parent);
        }
        if name.starts_with(AUFS_PREFIX) {
            return Err(bad_entry(
                &meta.path,
                "aufs metadata entries cannot be stored",
            ));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            self.refuse_dir(meta, is_dir)?;
            check_name(meta, hidden)?;
            let parent = self.parent(meta, parents)?;
            return self.add(parent, hidden, meta, meta.node(NodeKind::Whiteout));
        }
        check_name(meta, name)?;
        let parent = self.parent(meta, parents)?;
        if is_dir {
            return self.dir(parent, name, meta);
        }
        match kind {
            EntryType::Symlink => self.symlink(parent, name, meta),
            EntryType::Link => self.hard_link(parent, name, meta),
            EntryType::Char if meta.rdev == 0 => {
                self.add(parent, name, meta, meta.node(NodeKind::Whiteout))
            }
            EntryType::Char => self.add(parent, name, meta, meta.node(NodeKind::CharDev)),
            EntryType::Block => self.add(parent, name, meta, meta.node(NodeKind::BlockDev)),
            EntryType::Fifo => self.add(parent, name, meta, meta.node(NodeKind::Fifo)),
            _ => self.file(parent, name, meta, data),
        }
    }

    fn refuse_dir(&self, meta: &Meta, is_dir: bool) -> Result<()> {
        if is_dir {
            return Err(bad_entry(
                &meta.path,
                "a whiteout marker cannot be a directory",
            ));
        }
        Ok(())
    }

    /// The directory holding an entry, made (0755) if the archive did not list it.
    fn parent(&mut self, meta: &Meta, parents: &[&[u8]]) -> Result<Ino> {
        if let Some(&ino) = self.dirs.get(&parents.join(&b'/')) {
            return Ok(ino); // the usual case: the parent was listed or made already
        }
        let mut path = Vec::new();
        let mut dir = ROOT_INO;
        for (i, &comp) in parents.iter().enumerate() {
            if i > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(comp);
            if let Some(&ino) = self.dirs.get(&path) {
                dir = ino;
                continue;
            }
            match self.builder.lookup(dir, comp)? {
                Some(e) if e.kind == NodeKind::Symlink => {
                    return Err(bad_entry(
                        &meta.path,
                        format!("writes through symlink {:?}", lossy(&path)),
                    ));
                }
                Some(_) => {
                    return Err(bad_entry(
                        &meta.path,
                        format!("{:?} is not a directory", lossy(&path)),
                    ))
                }
                None => {
                    if comp.starts_with(WHITEOUT_PREFIX) {
                        return Err(bad_entry(
                            &meta.path,
                            "a whiteout marker cannot be a directory",
                        ));
                    }
                    check_name(meta, comp)?;
                    dir = self.builder.add(dir, comp, meta.implicit_dir())?;
                    self.dirs.insert(path.clone(), dir);
                }
            }
        }
        Ok(dir)
    }

    /// Adds a node, refusing a name the archive used already.
    fn add(&mut self, parent: Ino, name: &[u8], meta: &Meta, node: Node) -> Result<()> {
        self.ensure_new(parent, name, meta)?;
        self.builder.add(parent, name, node)?;
        Ok(())
    }

    /// Duplicate names are refused: the store cannot take back an earlier entry.
    fn ensure_new(&self, parent: Ino, name: &[u8], meta: &Meta) -> Result<()> {
        if self.builder.lookup(parent, name)?.is_some() {
            return Err(bad_entry(
                &meta.path,
                "the name appears twice in the archive",
            ));
        }
        Ok(())
    }

    fn dir(&mut self, parent: Ino, name: &[u8], meta: &Meta) -> Result<()> {
        match self.builder.lookup(parent, name)? {
            // Made implicitly for an earlier entry, or listed twice: take this metadata.
            Some(e) if e.kind == NodeKind::Dir => self.update_dir(e.ino, meta),
            Some(_) => Err(bad_entry(
                &meta.path,
                "the name appears twice in the archive",
            )),
            None => {
                let mut node = meta.node(NodeKind::Dir);
                node.opaque = meta.opaque;
                let ino = self.builder.add(parent, name, node)?;
                let key = components(&meta.path)?.join(&b'/');
                self.dirs.insert(key, ino);
                Ok(())
            }
        }
    }

    /// Gives an existing directory this entry's metadata (keeping links and opaque flag).
    fn update_dir(&mut self, ino: Ino, meta: &Meta) -> Result<()> {
        let mut node = self.dir_node(ino)?;
        node.mode = meta.mode;
        node.uid = meta.uid;
        node.gid = meta.gid;
        node.atime = meta.atime;
        node.mtime = meta.mtime;
        node.ctime = meta.ctime;
        node.xattrs = meta.xattrs.clone();
        node.opaque |= meta.opaque;
        self.put_dir(ino, node)
    }

    fn set_opaque(&mut self, ino: Ino) -> Result<()> {
        let mut node = self.dir_node(ino)?;
        node.opaque = true;
        self.put_dir(ino, node)
    }

    fn dir_node(&self, ino: Ino) -> Result<Node> {
        match self.builder.node(ino)? {
            Some(node) => Ok(node),
            None if ino == ROOT_INO => Ok(Node::new(NodeKind::Dir, 0o755)),
            None => Err(Error::Format {
                tree: "nodes",
                detail: format!("directory {ino} of the layer being built is missing"),
            }),
        }
    }

    fn put_dir(&mut self, ino: Ino, node: Node) -> Result<()> {
        if ino == ROOT_INO {
            self.builder.set_root(node)
        } else {
            self.builder.update(ino, node)
        }
    }

    fn symlink(&mut self, parent: Ino, name: &[u8], meta: &Meta) -> Result<()> {
        let target = match &meta.link {
            Some(t) if !t.is_empty() && !t.contains(&0) => t.clone(),
            _ => return Err(bad_entry(&meta.path, "symlink without a valid target")),
        };
        let mut node = meta.node(NodeKind::Symlink);
        node.size = target.len() as u64;
        node.content = Content::Inline(target);
        self.add(parent, name, meta, node)
    }

    fn hard_link(&mut self, parent: Ino, name: &[u8], meta: &Meta) -> Result<()> {
        let target = meta.link.as_deref().unwrap_or_default();
        let outside = || {
            bad_entry(
                &meta.path,
                format!("hard link to {:?} outside the archive", lossy(target)),
            )
        };
        let comps = components(target).map_err(|_| outside())?;
        let Some((&last, dirs)) = comps.split_last() else {
            return Err(outside());
        };
        let Some(&dir) = self.dirs.get(&dirs.join(&b'/')) else {
            return Err(outside());
        };
        let entry = self.builder.lookup(dir, last)?.ok_or_else(outside)?;
        match entry.kind {
            NodeKind::Dir => Err(bad_entry(
                &meta.path,
                format!("hard link to directory {:?}", lossy(target)),
            )),
            NodeKind::Whiteout => Err(bad_entry(
                &meta.path,
                format!("hard link to whiteout {:?}", lossy(target)),
            )),
            _ => {
                self.ensure_new(parent, name, meta)?;
                self.builder.link(parent, name, entry.ino)
            }
        }
    }

    fn file<R: Read>(
        &mut self,
        parent: Ino,
        name: &[u8],
        meta: &Meta,
        data: &mut EntryData<'_, R>,
    ) -> Result<()> {
        self.ensure_new(parent, name, meta)?;
        let node = meta.node(NodeKind::File);
        match self.builder.add_file(parent, name, node, data) {
            Ok(_) => Ok(()),
            Err(e) => Err(data.explain(e)),
        }
    }
}

fn is_regular(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
    )
}

/// Refuses entry types the store has no node for.
fn check_type(meta: &Meta) -> Result<()> {
    let kind = meta.kind;
    let supported = is_regular(kind)
        || matches!(
            kind,
            EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Char
                | EntryType::Block
                | EntryType::Fifo
        );
    if supported {
        return Ok(());
    }
    let byte = kind.as_byte();
    let shown = if byte.is_ascii_graphic() {
        format!("'{}'", byte as char)
    } else {
        format!("0x{byte:02x}")
    };
    Err(bad_entry(
        &meta.path,
        format!("entry type {shown} cannot be stored"),
    ))
}

/// A name component the store can hold.
fn check_name(meta: &Meta, name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(bad_entry(
            &meta.path,
            format!("invalid name {:?}", lossy(name)),
        ));
    }
    if name.len() > NAME_MAX {
        return Err(bad_entry(
            &meta.path,
            format!("a name is longer than {NAME_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Splits an archive path into its components: `.` and empty ones dropped;
/// absolute paths, `..` and NUL refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.is_empty() {
        return Err(bad_entry(path, "empty name"));
    }
    if path[0] == b'/' {
        return Err(bad_entry(path, "absolute path"));
    }
    if path.contains(&0) {
        return Err(bad_entry(path, "NUL in the name"));
    }
    let mut out = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(bad_entry(path, "`..` leads out of the archive root")),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_normalize_and_refuse() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"").is_err());
    }

    #[test]
    fn pax_data_finds_the_x_record_before_the_entry() {
        let mut header = ::tar::Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_size(5);
        header.set_cksum();
        let mut blocks = vec![0u8; 100]; // padding of the previous entry (start at 412)
        blocks.extend_from_slice(header.as_bytes());
        blocks.extend_from_slice(b"hello");
        blocks.resize(100 + 1024, 0);
        let found = pax_data(&blocks, 412, 412 + 100 + 1024).unwrap();
        assert_eq!(found, Some(&b"hello"[..]));
        assert_eq!(pax_data(&blocks[..100], 412, 512).unwrap(), None);
        assert!(pax_data(&blocks, 412, 412 + 100 + 512).is_err());
    }
}
