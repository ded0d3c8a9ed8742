//! The daemon's log: timestamped lines appended to `HOME/daemon.log`
//! (and copied to stderr in the foreground).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Logs above this size are moved to `daemon.log.old` when the daemon starts.
pub const LOG_ROTATE_BYTES: u64 = 1 << 20;

/// A line-oriented log shared by the daemon's threads.
pub struct Log {
    file: Mutex<Option<File>>,
    stderr: bool,
}

impl Log {
    /// Opens (appending) the log at `path`, rotating it when large. A log
    /// that cannot be opened is not an error: lines then go only to stderr.
    pub fn open(path: &Path, stderr: bool) -> Log {
        if std::fs::metadata(path)
            .map(|m| m.len() > LOG_ROTATE_BYTES)
            .unwrap_or(false)
        {
            let _ = std::fs::rename(path, path.with_extension("log.old"));
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .ok();
        Log {
            file: Mutex::new(file),
            stderr,
        }
    }

    /// A log that goes nowhere but stderr (when `stderr`).
    pub fn stderr_only(stderr: bool) -> Log {
        Log {
            file: Mutex::new(None),
            stderr,
        }
    }

    /// Appends one line.
    pub fn line(&self, msg: impl AsRef<str>) {
        let line = format!(
            "{} [{}] {}\n",
            utc_now(),
            std::process::id(),
            msg.as_ref().replace('\n', " ")
        );
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
        if self.stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    utc(d.as_secs() as i64, d.subsec_millis())
}

fn utc(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formatting() {
        assert_eq!(super::utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(super::utc(1_700_000_000, 0), "2023-11-14T22:13:20.000Z");
    }
}
