//! The inode table: merged nodes by FUSE node id (which fuser also reports as `st_ino`).
//!
//! Numbers are stable across copy-up and remount:
//! * `1` is the root;
//! * a node that comes from lower layer `L` with lower inode `i` is `(L + 1) << 48 | i`;
//!   when it is copied up, the number is recorded in the upper file (`user.stacko.origin`)
//!   and reused;
//! * a node that exists only in the upper directory is `0xFFFF << 48 | upper st_ino`;
//! * numbers that do not fit (lower inode >= 2^48, more than 65533 layers) get
//!   `0xFFFE << 48 | n` from a counter, stable for the life of the mount only.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::lower::{Kind, LowerIno};
use crate::shard::ShardedMap;

/// Node id of the root directory.
pub const ROOT_INO: u64 = 1;
const SHIFT: u32 = 48;
const LOW_MASK: u64 = (1 << SHIFT) - 1;
const UPPER_TAG: u64 = 0xFFFF;
const OVERFLOW_TAG: u64 = 0xFFFE;
const MAX_LAYERS: usize = 0xFFFD;

/// A position in the lower stack: (layer index, 0 = top; inode number in that layer).
pub type LowerRef = (usize, LowerIno);

/// Allocates merged inode numbers.
#[derive(Debug, Default)]
pub struct InoMap {
    overflow: Mutex<HashMap<(u64, u64), u64>>,
    next: AtomicU64,
}

impl InoMap {
    fn overflow(&self, tag: u64, v: u64) -> u64 {
        let mut m = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((tag, v)).or_insert_with(|| {
            (OVERFLOW_TAG << SHIFT) | (self.next.fetch_add(1, Ordering::Relaxed) + 1)
        })
    }

    /// Number of a node whose topmost origin is `lower inode` in `layer`.
    pub fn lower(&self, layer: usize, ino: LowerIno) -> u64 {
        if layer < MAX_LAYERS && ino <= LOW_MASK {
            ((layer as u64 + 1) << SHIFT) | ino
        } else {
            self.overflow(layer as u64 + 1, ino)
        }
    }

    /// Number of an upper-only node with upper `st_ino`.
    pub fn upper(&self, st_ino: u64) -> u64 {
        if st_ino <= LOW_MASK {
            (UPPER_TAG << SHIFT) | st_ino
        } else {
            self.overflow(UPPER_TAG, st_ino)
        }
    }
}

/// The lower origin encoded in a merged number, if it is a lower-origin number.
pub fn decode_lower(ino: u64) -> Option<LowerRef> {
    let tag = ino >> SHIFT;
    if tag == 0 || tag >= OVERFLOW_TAG {
        return None;
    }
    Some(((tag - 1) as usize, ino & LOW_MASK))
}

/// Mutable state of a node.
#[derive(Debug)]
pub struct NodeState {
    /// Parent directory node (primary name).
    pub parent: u64,
    /// Name in the parent (primary name).
    pub name: OsString,
    /// Other names (hard links) seen: (parent, name).
    pub aliases: Vec<(u64, OsString)>,
    /// The primary name exists in the upper directory as this node.
    pub upper: bool,
    /// Directories with an upper part: the open upper directory.
    pub dirfd: Option<Arc<OwnedFd>>,
    /// Topmost lower node (data and metadata source while not copied up).
    pub origin: Option<LowerRef>,
    /// Directories: the lower directories merged below the upper one, top first.
    pub lower_dirs: Vec<LowerRef>,
    /// Directories: the path of the lower directories from the layer roots ("/a/b"; "" for
    /// the root), used as the redirect target when the directory is renamed.
    pub lpath: Option<Arc<[u8]>>,
    /// The upper file holds metadata only; data is read from `origin`.
    pub metacopy: bool,
    /// Data and metadata live in the hard-link index (`stacko-index/<ino>`).
    pub indexed: bool,
    /// Owner and mode kept in `user.containers.override_stat`.
    pub override_stat: Option<(u32, u32, u32)>,
    /// Every name is gone.
    pub unlinked: bool,
    /// Bumped on each data copy-up, so open handles on lower data can switch to the upper.
    pub data_gen: u64,
    /// An unlinked node that was open when its last name went: an `O_PATH` fd of its upper
    /// inode, so that `fstat` (and `fchmod`, `futimens`, `ftruncate`) on the open files keep
    /// working, as POSIX requires.
    pub orphan: Option<Arc<OwnedFd>>,
}

impl NodeState {
    /// Fresh state for a node named `name` in `parent`.
    pub fn new(parent: u64, name: OsString) -> Self {
        NodeState {
            parent,
            name,
            aliases: Vec::new(),
            upper: false,
            dirfd: None,
            origin: None,
            lower_dirs: Vec::new(),
            lpath: None,
            metacopy: false,
            indexed: false,
            override_stat: None,
            unlinked: false,
            data_gen: 0,
            orphan: None,
        }
    }

    /// Whether data must be read from the upper (or index) file.
    pub fn data_in_upper(&self) -> bool {
        (self.indexed || self.upper) && !self.metacopy
    }
}

/// How the files of a node are currently open (FUSE requires all opens of an inode to use
/// passthrough with the same backing file, or none to).
#[derive(Debug, Default)]
pub struct OpenState {
    /// Number of open handles.
    pub count: usize,
    /// The open handles use passthrough; `Some(true)` if the backing file is in the upper.
    pub passthrough: Option<bool>,
}

/// One merged node.
#[derive(Debug)]
pub struct Node {
    /// Merged inode number (FUSE node id).
    pub ino: u64,
    /// Kind of node (fixed for the node's life).
    pub kind: Kind,
    state: RwLock<NodeState>,
    /// Kernel lookup references plus one per child node in the table.
    pub refs: AtomicU64,
    /// Serialises copy-up of this node.
    pub copy_lock: Mutex<()>,
    /// Held for writing while a name of this node moves or goes away in the upper (the
    /// syscall and the node's bookkeeping), for reading while a file is opened by its upper
    /// name: an open never meets the whiteout a concurrent rename leaves behind.
    pub name_lock: RwLock<()>,
    /// Open accounting.
    pub opens: Mutex<OpenState>,
}

impl Node {
    /// A node with no references yet.
    pub fn new(ino: u64, kind: Kind, state: NodeState) -> Node {
        Node {
            ino,
            kind,
            state: RwLock::new(state),
            refs: AtomicU64::new(0),
            copy_lock: Mutex::new(()),
            name_lock: RwLock::new(()),
            opens: Mutex::new(OpenState::default()),
        }
    }

    /// Read access to the state.
    pub fn st(&self) -> RwLockReadGuard<'_, NodeState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access to the state.
    pub fn st_mut(&self) -> RwLockWriteGuard<'_, NodeState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

/// The table of live nodes.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: ShardedMap<Arc<Node>>,
    /// Inode number allocation.
    pub inos: InoMap,
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> Self {
        NodeTable {
            nodes: ShardedMap::new(),
            inos: InoMap::default(),
        }
    }

    /// The node numbered `ino`.
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.get(ino)
    }

    /// Inserts the root (pinned forever).
    pub fn insert_root(&self, node: Node) -> Arc<Node> {
        let n = Arc::new(node);
        n.refs.store(1, Ordering::Relaxed);
        self.nodes.with_mut(n.ino, |m| m.insert(n.ino, n.clone()));
        n
    }

    /// Returns the live node numbered `node.ino`, inserting `node` if there is none (or if
    /// the one there is unlinked or of another kind). The returned node gains `add_refs`
    /// references. A newly inserted node pins its parent.
    pub fn get_or_insert(&self, node: Node, add_refs: u64) -> (Arc<Node>, bool) {
        let ino = node.ino;
        // (node, newly inserted, parent pinned by the node it replaced)
        let (n, inserted, replaced_pin) = self.nodes.with_mut(ino, |m| {
            if let Some(old) = m.get(&ino) {
                let old_st = old.st();
                let stale = old.kind != node.kind || old_st.unlinked;
                let old_parent = old_st.parent;
                drop(old_st);
                if !stale {
                    old.refs.fetch_add(add_refs, Ordering::Relaxed);
                    return (old.clone(), false, None);
                }
                // Keep the kernel's lookup count of the number; the old node stays alive
                // only through open handles.
                let carried = old.refs.load(Ordering::Relaxed);
                node.refs.store(carried + add_refs, Ordering::Relaxed);
                let n = Arc::new(node);
                m.insert(ino, n.clone());
                return (n, false, Some(old_parent));
            }
            node.refs.store(add_refs, Ordering::Relaxed);
            let n = Arc::new(node);
            m.insert(ino, n.clone());
            (n, true, None)
        });
        let parent = n.st().parent;
        if inserted {
            if let Some(p) = self.get(parent) {
                p.refs.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(old_parent) = replaced_pin {
            // the pin the replaced node held moves to the new node's parent
            self.repin(old_parent, parent);
        }
        (n, inserted)
    }

    /// Drops `n` references from `ino`; nodes reaching zero leave the table and unpin their
    /// parent.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut cur = ino;
        let mut dec = n;
        loop {
            if cur == ROOT_INO {
                return;
            }
            let removed = self.nodes.with_mut(cur, |m| {
                let node = m.get(&cur)?;
                let prev = node.refs.load(Ordering::Relaxed);
                let next = prev.saturating_sub(dec);
                node.refs.store(next, Ordering::Relaxed);
                if next == 0 {
                    let node = m.remove(&cur)?;
                    let parent = node.st().parent;
                    Some(parent)
                } else {
                    None
                }
            });
            match removed {
                Some(parent) => {
                    cur = parent;
                    dec = 1;
                }
                None => return,
            }
        }
    }

    /// Moves the parent pin of `node` from its current parent to `new_parent`.
    pub fn repin(&self, old_parent: u64, new_parent: u64) {
        if old_parent == new_parent {
            return;
        }
        if let Some(p) = self.get(new_parent) {
            p.refs.fetch_add(1, Ordering::Relaxed);
        }
        self.forget(old_parent, 1);
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only nothing is live.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_ranges_are_distinct() {
        let m = InoMap::default();
        let a = m.lower(0, 12345);
        assert_eq!(decode_lower(a), Some((0, 12345)));
        let b = m.lower(7, 2);
        assert_eq!(decode_lower(b), Some((7, 2)));
        let u = m.upper(12345);
        assert_eq!(decode_lower(u), None);
        assert_ne!(a, u);
        let o = m.lower(0, 1 << 50);
        assert_eq!(decode_lower(o), None);
        assert_eq!(o, m.lower(0, 1 << 50));
        assert_ne!(o, m.lower(1, 1 << 50));
    }

    fn table_with_root() -> NodeTable {
        let t = NodeTable::new();
        t.insert_root(Node::new(
            ROOT_INO,
            Kind::Dir,
            NodeState::new(ROOT_INO, "".into()),
        ));
        t
    }

    #[test]
    fn forget_removes_and_unpins_parents() {
        let t = table_with_root();
        let (d, _) = t.get_or_insert(
            Node::new(10, Kind::Dir, NodeState::new(ROOT_INO, "d".into())),
            1,
        );
        let (f, _) = t.get_or_insert(Node::new(11, Kind::File, NodeState::new(10, "f".into())), 2);
        assert_eq!(d.refs.load(Ordering::Relaxed), 2);
        t.forget(10, 1);
        assert!(t.get(10).is_some(), "a parent with live children stays");
        t.forget(11, 1);
        assert!(t.get(11).is_some());
        drop(f);
        t.forget(11, 1);
        assert!(t.get(11).is_none());
        assert!(t.get(10).is_none(), "the parent goes with its last child");
        assert!(t.get(ROOT_INO).is_some());
    }

    #[test]
    fn a_replaced_stale_node_moves_its_parent_pin() {
        let t = table_with_root();
        let dir =
            |ino, name: &str| Node::new(ino, Kind::Dir, NodeState::new(ROOT_INO, name.into()));
        let (p1, _) = t.get_or_insert(dir(10, "p1"), 1);
        let (p2, _) = t.get_or_insert(dir(20, "p2"), 1);
        let (old, _) =
            t.get_or_insert(Node::new(11, Kind::File, NodeState::new(10, "f".into())), 1);
        old.st_mut().unlinked = true;
        // the same number comes back under another parent (as after a rename elsewhere)
        let (new, inserted) =
            t.get_or_insert(Node::new(11, Kind::File, NodeState::new(20, "g".into())), 1);
        assert!(!inserted);
        assert_eq!(
            new.refs.load(Ordering::Relaxed),
            2,
            "the kernel's count is kept"
        );
        assert_eq!(
            p1.refs.load(Ordering::Relaxed),
            1,
            "p1 no longer pinned by 11"
        );
        assert_eq!(p2.refs.load(Ordering::Relaxed), 2, "p2 pinned by 11");
        t.forget(11, 2);
        assert!(t.get(11).is_none());
        assert_eq!(p2.refs.load(Ordering::Relaxed), 1);
        assert_eq!(p1.refs.load(Ordering::Relaxed), 1);
    }
}
