//! Writing a layer (or the merged view of a stack of layers) as a tar stream.
//!
//! The tree is walked depth-first in name order with an explicit stack (no
//! recursion, so a deep tree cannot overflow the call stack). A directory of
//! the merged view is a list of same-path directories of the layers, top
//! first; its entries come from merging their name-sorted listings.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::iter::Peekable;

use ::tar::{Builder, EntryType, Header};

use super::pax;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::read::{ContentReader, DirIter};
use crate::records::{DirEntry, Ino, LayerId, Node, NodeKind, ROOT_INO};
use crate::store::Store;

/// Name and link fields of a tar header hold this many bytes; longer ones
/// go into GNU long-name entries.
const NAME_FIELD: usize = 100;

/// See [`super::export_tar`].
pub(crate) fn export(
    store: &Store,
    layers: &[LayerId],
    flatten: bool,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<()> {
    let layers = if flatten {
        layers
    } else {
        &layers[..layers.len().min(1)]
    };
    if layers.is_empty() {
        return Err(Error::Refused("nothing to export: no layer given".into()));
    }
    let mut writer = Guarded {
        inner: BufWriter::with_capacity(1 << 16, out),
        poisoned: false,
    };
    let mut exporter = Exporter {
        store,
        tar: Builder::new(&mut writer),
        markers: !flatten,
        links: HashMap::new(),
        progress,
        path: Vec::new(),
    };
    match exporter.run(layers) {
        Ok(()) => {
            exporter.tar.finish().map_err(write_error)?;
            drop(exporter);
            writer.inner.flush().map_err(write_error)
        }
        Err(e) => {
            // Never end a failed export with an end-of-archive marker: it
            // would look like a complete (shorter) archive.
            exporter.tar.get_mut().poisoned = true;
            Err(e)
        }
    }
}

fn write_error(e: io::Error) -> Error {
    Error::io("writing the archive", e)
}

/// A writer that refuses everything once poisoned (the tar builder writes
/// its end marker when dropped).
struct Guarded<W: Write> {
    inner: W,
    poisoned: bool,
}

impl<W: Write> Write for Guarded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::other("export failed"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other("export failed"));
        }
        self.inner.flush()
    }
}

/// One layer's listing of a directory of the merged view.
struct Listing {
    layer: LayerId,
    entries: Peekable<DirIter>,
}

/// A directory being listed: its path's length (with the trailing `/`,
/// 0 for the root) and its listings, top layer first.
struct Frame {
    path_len: usize,
    listings: Vec<Listing>,
}

struct Exporter<'a, W: Write> {
    store: &'a Store,
    tar: Builder<W>,
    /// Whether whiteouts and opaque directories are written as OCI markers
    /// (one layer as stored) or applied (flattened view).
    markers: bool,
    /// First path written for each multiply-linked node.
    links: HashMap<(LayerId, Ino), Vec<u8>>,
    progress: &'a dyn Progress,
    /// The path being written.
    path: Vec<u8>,
}

impl<W: Write> Exporter<'_, W> {
    fn run(&mut self, layers: &[LayerId]) -> Result<()> {
        let mut chain = Vec::new();
        for &layer in layers {
            let root = self.node(layer, ROOT_INO)?;
            let opaque = root.opaque;
            chain.push((layer, ROOT_INO, root));
            if opaque && !self.markers {
                break;
            }
        }
        let root = chain[0].2.clone();
        self.path = b"./".to_vec();
        self.directory(&root)?;
        let mut stack = vec![self.frame(0, &chain)];
        while let Some(frame) = stack.last_mut() {
            let Some(group) = next_group(frame)? else {
                stack.pop();
                continue;
            };
            let path_len = frame.path_len;
            self.path.truncate(path_len);
            if let Some(frame) = self.child(&group)? {
                stack.push(frame);
            }
        }
        Ok(())
    }

    fn frame(&self, path_len: usize, chain: &[(LayerId, Ino, Node)]) -> Frame {
        let listings = chain
            .iter()
            .map(|&(layer, ino, _)| Listing {
                layer,
                entries: self.store.read_dir(layer, ino, None).peekable(),
            })
            .collect();
        Frame { path_len, listings }
    }

    fn node(&self, layer: LayerId, ino: Ino) -> Result<Node> {
        self.store.node(layer, ino)?.ok_or_else(|| Error::Format {
            tree: "nodes",
            detail: format!("layer {layer} has an entry for missing node {ino}"),
        })
    }

    /// Writes the entries for one name (as given by each layer that has it,
    /// top first); returns the frame to descend into for a directory.
    fn child(&mut self, group: &[(LayerId, DirEntry)]) -> Result<Option<Frame>> {
        let (layer, top) = &group[0];
        if top.kind == NodeKind::Whiteout {
            if self.markers {
                let node = self.node(*layer, top.ino)?;
                self.path.extend_from_slice(b".wh.");
                self.path.extend_from_slice(&top.name);
                self.whiteout(&node)?;
            }
            return Ok(None);
        }
        self.path.extend_from_slice(&top.name);
        let node = self.node(*layer, top.ino)?;
        if top.kind != NodeKind::Dir {
            self.leaf(*layer, top.ino, &node)?;
            return Ok(None);
        }
        self.path.push(b'/');
        self.directory(&node)?;
        let mut chain = vec![(*layer, top.ino, node)];
        if !self.markers && !chain[0].2.opaque {
            for (lower, entry) in &group[1..] {
                if entry.kind != NodeKind::Dir {
                    break; // a file or whiteout below hides everything further down
                }
                let node = self.node(*lower, entry.ino)?;
                let opaque = node.opaque;
                chain.push((*lower, entry.ino, node));
                if opaque {
                    break;
                }
            }
        }
        Ok(Some(self.frame(self.path.len(), &chain)))
    }

    /// A directory entry at `self.path` (ending in `/`), then its opaque marker.
    fn directory(&mut self, node: &Node) -> Result<()> {
        let path = self.path.clone();
        self.append(&path, None, node, EntryType::Directory, 0, None)?;
        if self.markers && node.opaque {
            // Children of the root have no `./` prefix.
            let mut marker = if path == b"./" { Vec::new() } else { path };
            marker.extend_from_slice(b".wh..wh..opq");
            let empty = Node {
                mode: 0,
                xattrs: Vec::new(),
                ..node.clone()
            };
            self.append(&marker, None, &empty, EntryType::Regular, 0, None)?;
        }
        Ok(())
    }

    /// A whiteout as an OCI `.wh.NAME` empty file (mode 0) at `self.path`.
    fn whiteout(&mut self, node: &Node) -> Result<()> {
        let path = self.path.clone();
        let node = Node {
            mode: 0,
            ..node.clone()
        };
        self.append(&path, None, &node, EntryType::Regular, 0, None)
    }

    /// A non-directory at `self.path`; later names of a linked node become hard links.
    fn leaf(&mut self, layer: LayerId, ino: Ino, node: &Node) -> Result<()> {
        let path = self.path.clone();
        if node.nlink > 1 && node.kind != NodeKind::Socket {
            if let Some(first) = self.links.get(&(layer, ino)) {
                let first = first.clone();
                let header = header(node, EntryType::Link, 0)?;
                return self.write(header, &path, Some(&first), None, None);
            }
            self.links.insert((layer, ino), path.clone());
        }
        match node.kind {
            NodeKind::File => {
                let reader = self.store.open_content(&node.content)?;
                self.append(
                    &path,
                    None,
                    node,
                    EntryType::Regular,
                    node.size,
                    Some(reader),
                )
            }
            NodeKind::Symlink => {
                let target = self.store.readlink(node)?;
                self.append(&path, Some(&target), node, EntryType::Symlink, 0, None)
            }
            NodeKind::CharDev => self.append(&path, None, node, EntryType::Char, 0, None),
            NodeKind::BlockDev => self.append(&path, None, node, EntryType::Block, 0, None),
            NodeKind::Fifo => self.append(&path, None, node, EntryType::Fifo, 0, None),
            // tar has no socket entries (GNU tar skips them too).
            NodeKind::Socket => Ok(()),
            NodeKind::Dir | NodeKind::Whiteout => Ok(()), // handled by the caller
        }
    }

    /// One entry with its PAX header (times with nanoseconds, xattrs).
    fn append(
        &mut self,
        path: &[u8],
        link: Option<&[u8]>,
        node: &Node,
        kind: EntryType,
        size: u64,
        content: Option<ContentReader>,
    ) -> Result<()> {
        let header = header(node, kind, size)?;
        let mut records = Vec::new();
        pax::push_record(
            &mut records,
            b"mtime",
            pax::format_time(node.mtime).as_bytes(),
        );
        pax::push_record(
            &mut records,
            b"atime",
            pax::format_time(node.atime).as_bytes(),
        );
        pax::push_record(
            &mut records,
            b"ctime",
            pax::format_time(node.ctime).as_bytes(),
        );
        for x in &node.xattrs {
            let key = pax::xattr_key(&x.name);
            pax::push_record(&mut records, &key, &x.value);
        }
        self.write(header, path, link, Some(&records), content)
    }

    /// Writes PAX records, long names, the header and the content.
    fn write(
        &mut self,
        mut header: Header,
        path: &[u8],
        link: Option<&[u8]>,
        records: Option<&[u8]>,
        content: Option<ContentReader>,
    ) -> Result<()> {
        if let Some(records) = records {
            let mut x =
                extension_header(EntryType::XHeader, b"././@PaxHeader", records.len() as u64);
            x.set_cksum();
            self.tar.append(&x, records).map_err(write_error)?;
        }
        self.name_field(&mut header, path, false)?;
        if let Some(link) = link {
            self.name_field(&mut header, link, true)?;
        }
        header.set_cksum();
        let size = header.entry_size().map_err(write_error)?;
        match content {
            None => self.tar.append(&header, io::empty()).map_err(write_error)?,
            Some(reader) => {
                let mut data = Content {
                    reader,
                    offset: 0,
                    size,
                    error: None,
                };
                if let Err(e) = self.tar.append(&header, &mut data) {
                    return Err(data.error.take().unwrap_or_else(|| write_error(e)));
                }
            }
        }
        self.progress.advance(size, 1);
        Ok(())
    }

    /// Puts a name (or link target) in the header, preceded by a GNU
    /// long-name entry when it does not fit.
    fn name_field(&mut self, header: &mut Header, name: &[u8], is_link: bool) -> Result<()> {
        let old = header.as_old_mut();
        let field = if is_link {
            &mut old.linkname
        } else {
            &mut old.name
        };
        let shown = &name[..name.len().min(NAME_FIELD)];
        field.fill(0);
        field[..shown.len()].copy_from_slice(shown);
        if name.len() > NAME_FIELD {
            let kind = if is_link {
                EntryType::GNULongLink
            } else {
                EntryType::GNULongName
            };
            let mut long = extension_header(kind, b"././@LongLink", name.len() as u64 + 1);
            long.set_cksum();
            self.tar
                .append(&long, name.chain(&[0u8][..]))
                .map_err(write_error)?;
        }
        Ok(())
    }
}

/// The next name of a directory of the merged view, with every listing's
/// entry for it (top first).
fn next_group(frame: &mut Frame) -> Result<Option<Vec<(LayerId, DirEntry)>>> {
    let mut least: Option<Vec<u8>> = None;
    for listing in &mut frame.listings {
        match listing.entries.peek() {
            Some(Ok(e)) if least.as_ref().is_none_or(|l| e.name < *l) => {
                least = Some(e.name.clone());
            }
            Some(Ok(_)) | None => {}
            Some(Err(_)) => {
                if let Some(Err(e)) = listing.entries.next() {
                    return Err(e);
                }
            }
        }
    }
    let Some(least) = least else {
        return Ok(None);
    };
    let mut group = Vec::new();
    for listing in &mut frame.listings {
        if matches!(listing.entries.peek(), Some(Ok(e)) if e.name == least) {
            if let Some(Ok(e)) = listing.entries.next() {
                group.push((listing.layer, e));
            }
        }
    }
    Ok(Some(group))
}

/// A GNU header with the node's metadata; names are set by the caller.
fn header(node: &Node, kind: EntryType, size: u64) -> Result<Header> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(node.mode & 0o7777);
    h.set_uid(u64::from(node.uid));
    h.set_gid(u64::from(node.gid));
    // The exact (possibly negative) time is in the PAX record.
    h.set_mtime(u64::try_from(node.mtime.sec).unwrap_or(0));
    h.set_size(size);
    if matches!(kind, EntryType::Char | EntryType::Block) {
        h.set_device_major(libc::major(node.rdev))
            .map_err(write_error)?;
        h.set_device_minor(libc::minor(node.rdev))
            .map_err(write_error)?;
    }
    Ok(h)
}

/// The header of a PAX or GNU long-name extension entry.
fn extension_header(kind: EntryType, name: &[u8], size: u64) -> Header {
    let mut h = if kind == EntryType::XHeader {
        Header::new_ustar()
    } else {
        Header::new_gnu()
    };
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    let field = &mut h.as_old_mut().name;
    field[..name.len()].copy_from_slice(name);
    h
}

/// A node's content as a reader of exactly `size` bytes; store errors are
/// kept so that they are reported as such, not as write errors.
struct Content {
    reader: ContentReader,
    offset: u64,
    size: u64,
    error: Option<Error>,
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size - self.offset;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match self.reader.read_at(self.offset, &mut buf[..want]) {
            Ok(0) => {
                self.error = Some(Error::Format {
                    tree: "objects",
                    detail: format!("content ends at {} of its {} bytes", self.offset, self.size),
                });
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "content shorter than its size",
                ))
            }
            Ok(n) => {
                self.offset += n as u64;
                Ok(n)
            }
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}
