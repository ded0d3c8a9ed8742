//! kill -9 of a process importing into the store, at a random moment:
//! the store must reopen, list no half image, keep every committed image
//! whole, and hold exactly the objects its images use.

mod store_common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use stacko_store::ingest::ingest_dir;
use stacko_store::progress::NoProgress;
use stacko_store::store::StoreOptions;
use stacko_store::{Content, ImageState, LayerState, NodeKind, Store};
use store_common::*;

/// Set in the child: `HOME_DIR\nSOURCE_DIR`.
const CHILD_ENV: &str = "STACKO_STORE_CRASH_CHILD";

/// Printed by the child once it holds the store.
const READY: &str = "crash-child-ready";

fn options() -> StoreOptions {
    StoreOptions {
        lock_timeout: Duration::from_secs(60),
        ..StoreOptions::default()
    }
}

/// The child: imports the source again and again until it is killed.
#[test]
#[ignore = "child process of kill_during_import_leaves_whole_images"]
fn crash_child() {
    let spec = std::env::var(CHILD_ENV).expect("run by kill_during_import_leaves_whole_images");
    let (home, src) = spec.split_once('\n').expect("home and source");
    let store = Store::open_with(Path::new(home), &options()).unwrap();
    println!("\n{READY}");
    // Bounded, in case the parent is gone.
    for i in 0..500 {
        let s = ingest_dir(&store, Path::new(src), &NoProgress).unwrap();
        let name = format!("img-{}-{i}", std::process::id());
        store
            .commit_image(&name, None, &s, ImageState::Sealed)
            .unwrap();
        println!("committed {name}");
    }
}

/// A tree of about 1,500 entries: inline and object files, links.
fn make_source(root: &Path) {
    for d in 0..30 {
        let dir = root.join(format!("d{d:02}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..45 {
            let len = if f % 2 == 0 {
                100 + f * 10
            } else {
                5_000 + 997 * f
            };
            fs::write(
                dir.join(format!("f{f:02}")),
                bytes((d * 100 + f) as u64, len),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink("sub/f01", root.join(format!("d{d:02}/link"))).unwrap();
        fs::hard_link(dir.join("f03"), root.join(format!("d{d:02}/hard"))).unwrap();
    }
}

/// Relative path → file content (None for other kinds).
fn expected(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    out.insert(PathBuf::new(), None);
    walk(root, &mut |p, m| {
        let content = m.is_file().then(|| fs::read(p).unwrap());
        out.insert(p.strip_prefix(root).unwrap().to_path_buf(), content);
    });
    out
}

/// Object names on disk.
fn object_files(home: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for fan in fs::read_dir(home.join("objects")).unwrap() {
        let fan = fan.unwrap();
        if fan.file_name() == "tmp" {
            continue;
        }
        for obj in fs::read_dir(fan.path()).unwrap() {
            let name = obj.unwrap().file_name().to_string_lossy().into_owned();
            out.insert(format!("{}{name}", fan.file_name().to_string_lossy()));
        }
    }
    out
}

/// Every image whole, every layer referenced, objects exactly those used.
fn check_store(store: &Store, want: &BTreeMap<PathBuf, Option<Vec<u8>>>) -> usize {
    let images = store.images().unwrap();
    let layers = store.layer_records().unwrap();
    assert_eq!(
        layers.len(),
        images.len(),
        "one layer per image, no leftovers"
    );
    let mut used = BTreeSet::new();
    for img in &images {
        let rec = layers
            .iter()
            .find(|(id, _)| *id == img.layer)
            .expect("image's layer exists");
        assert_eq!(rec.1.state, LayerState::Live);
        let nodes = walk_layer(store, img.layer);
        let paths: Vec<_> = nodes.keys().collect();
        let want_paths: Vec<_> = want.keys().collect();
        assert_eq!(paths, want_paths, "image {} is whole", img.name);
        for (path, (_, node)) in &nodes {
            if let Content::Object(id) = &node.content {
                used.insert(id.to_hex());
            }
            if node.kind == NodeKind::File {
                let data = want[path].as_ref().expect("a file in the source");
                assert_eq!(
                    &read_all(store, node),
                    data,
                    "{} in {}",
                    path.display(),
                    img.name
                );
            }
        }
    }
    assert_eq!(
        object_files(store.home()),
        used,
        "no orphan and no missing object"
    );
    assert_eq!(temp_files(store.home()), 0);
    images.len()
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small xorshift generator seeded from the clock (printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_during_import_leaves_whole_images() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let want = expected(&src);
    let home = tmp.path().join("home");
    let seed = std::env::var("STACKO_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("STACKO_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut committed = 0;
    for round in 0..5 {
        let mut child = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{}\n{}", home.display(), src.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        // Wait until the child holds the store, then let it work a random while.
        for line in lines.by_ref() {
            if line.unwrap().contains(READY) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 2500));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let done: Vec<String> = lines
            .map_while(|l| l.ok())
            .filter_map(|l| {
                l.split_once("committed ")
                    .map(|(_, name)| name.trim().to_string())
            })
            .collect();
        committed += done.len();

        let store = Store::open_with(&home, &options()).unwrap();
        let images = check_store(&store, &want);
        for name in &done {
            assert!(
                store.image(name).unwrap().is_some(),
                "committed image {name} survived"
            );
        }
        eprintln!("round {round}: {images} whole images");
        // Start the next round from a store with one image (objects shared)
        // or none, so both the write and the dedup paths get killed.
        let names: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let keep = if round % 2 == 0 { 1 } else { 0 };
        for name in names.iter().skip(keep) {
            store.delete_image(name).unwrap();
        }
        check_store(&store, &want);
    }
    eprintln!("{committed} imports committed in all");
}
