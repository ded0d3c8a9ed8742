//! Helpers shared by the CLI end-to-end tests.

use std::ffi::OsStr;
use std::process::Output;

/// The arguments as one string, for messages.
pub fn show<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command succeeded (its stderr in the message if not).
pub fn assert_ok<S: AsRef<OsStr>>(out: &Output, args: &[S]) {
    assert!(
        out.status.success(),
        "stacko {} failed ({}): {}",
        show(args),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exit 1, nothing on stdout, exactly one line `stacko: error: ...` on stderr.
pub fn assert_clean_failure<S: AsRef<OsStr>>(out: &Output, args: &[S]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stacko {} should fail with 1; stderr: {err}",
        show(args)
    );
    assert!(
        out.stdout.is_empty(),
        "stacko {}: stdout not empty",
        show(args)
    );
    assert_eq!(
        err.lines().count(),
        1,
        "stacko {}: not one line: {err:?}",
        show(args)
    );
    assert!(
        err.starts_with("stacko: error: "),
        "stacko {}: {err:?}",
        show(args)
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}
