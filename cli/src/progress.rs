//! The progress bar shown on a terminal during import and export.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stacko::Progress;

/// A bar on stderr; only made when stderr is a terminal.
pub struct Bar {
    bar: ProgressBar,
    files: AtomicU64,
}

impl Bar {
    /// A bar for `verb` ("importing", "exporting"), or `None` when stderr is not a terminal.
    pub fn on_terminal(verb: &'static str) -> Option<Bar> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix} {binary_bytes} {msg} ({elapsed})")
        {
            bar.set_style(style);
        }
        bar.set_prefix(verb);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(Bar {
            bar,
            files: AtomicU64::new(0),
        })
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.bar.set_length(bytes);
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg} ({eta} left)",
        ) {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    fn advance(&self, bytes: u64, files: u64) {
        self.bar.inc(bytes);
        let f = self.files.fetch_add(files, Ordering::Relaxed) + files;
        self.bar.set_message(format!("{f} files"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
