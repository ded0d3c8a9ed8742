//! The build id a client and a daemon compare in their handshake: the
//! crate version, the protocol version, and the size and modification time
//! of the running executable. A rebuilt or upgraded binary gets a new id,
//! so the CLI never talks to a daemon of another build.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// This process's build id (computed once).
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        // /proc/self/exe names the running file even after it was replaced on disk.
        let exe = std::fs::metadata("/proc/self/exe")
            .map(|m| format!("{}.{}.{}", m.len(), m.mtime(), m.mtime_nsec()))
            .unwrap_or_else(|_| "unknown".into());
        format!(
            "stacko {} p{} {exe}",
            env!("CARGO_PKG_VERSION"),
            crate::protocol::PROTOCOL_VERSION
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_within_a_process_and_names_the_version() {
        let a = super::build_id();
        assert_eq!(a, super::build_id());
        assert!(a.contains(env!("CARGO_PKG_VERSION")));
        assert!(!a.contains("unknown"));
    }
}
