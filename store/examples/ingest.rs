//! Ingests a directory into a store as a new sealed image, then prints the
//! image record. For measuring by hand (time, peak RSS):
//!
//! ```text
//! STACKO_CACHE_MIB=64 \
//! cargo run --release -p stacko-store --example ingest -- HOME SOURCE NAME
//! ```

use std::path::Path;
use std::process::ExitCode;

use stacko_store::ingest::ingest_dir;
use stacko_store::progress::NoProgress;
use stacko_store::store::StoreOptions;
use stacko_store::{ImageState, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, home, src, name] = args.as_slice() else {
        eprintln!("usage: ingest HOME SOURCE NAME");
        return ExitCode::from(2);
    };
    let run = || -> stacko_store::Result<()> {
        let mut opts = StoreOptions::default();
        if let Some(mib) = std::env::var("STACKO_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            opts.cache_bytes = mib << 20;
        }
        let store = Store::open_with(Path::new(home), &opts)?;
        store.check_new_image(name, None)?;
        let layer = ingest_dir(&store, Path::new(src), &NoProgress)?;
        let image = store.commit_image(name, None, &layer, ImageState::Sealed)?;
        println!("{image:?}");
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest: {e}");
            ExitCode::FAILURE
        }
    }
}
