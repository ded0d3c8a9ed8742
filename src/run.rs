//! `stacko run STACKPOINT -- COMMAND...`: runs a command with the
//! stackpoint mounted, wherever that is possible.
//!
//! - Already mounted: the command just runs.
//! - This process could mount (kernel overlayfs or FUSE): the daemon mounts
//!   the stackpoint (it stays mounted), then the command runs.
//! - Neither (no `CAP_SYS_ADMIN`, no usable `fusermount3`, as in a CI
//!   container): the daemon prepares the layer checkouts, and this process
//!   enters a new user and mount namespace, mounts kernel overlayfs
//!   (`userxattr`) of the checkouts and the current instance's upper
//!   directory at the stackpoint's directory there, and executes the
//!   command in it. The mount exists only for the command (and its
//!   children); what it writes stays in the instance.
//!
//! The command's exit status is returned for the caller to forward.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};

use crate::api::{Api, Backend};
use crate::backend::{self, Kind, Plan};
use crate::error::{Error, Result};

/// Runs `argv` with stackpoint `name` mounted (see the module docs).
pub fn run(
    api: &dyn Api,
    name: &str,
    requested: Option<Backend>,
    argv: &[OsString],
) -> Result<ExitStatus> {
    let Some(program) = argv.first() else {
        return Err(Error::Invalid(
            "no command given: stacko run STACKPOINT -- COMMAND...".into(),
        ));
    };
    if api.is_stackpoint_mounted(name)? {
        return spawn(argv);
    }
    match backend::choose_backend(requested.map(Into::into))? {
        Plan::Kernel | Plan::Fuse(_) => {
            api.mount_stackpoint(name, requested)?;
            spawn(argv)
        }
        Plan::UserNs {
            inner: Kind::Kernel,
        } => {
            let plan = api.prepare_run(name)?;
            let setup = move || -> std::io::Result<()> {
                backend::Overlay::new(plan.lowers)
                    .with_upper(&plan.upper, &plan.work)
                    .mount(&plan.dir)
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            };
            backend::run_in_userns(setup, argv).map_err(|e| {
                Error::io(
                    format!("stacko run {name} -- {}", program.to_string_lossy()),
                    e,
                )
            })
        }
        Plan::UserNs { inner: Kind::Fuse } => Err(Error::Refused(
            "cannot mount here: kernel overlayfs is not available, even in a user namespace, \
             and stacko run does not serve FUSE inside a namespace; use a kernel with overlayfs \
             (Linux >= 5.11) or install fuse3 for fusermount3"
                .into(),
        )),
    }
}

fn spawn(argv: &[OsString]) -> Result<ExitStatus> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.status()
        .map_err(|e| Error::io(format!("cannot run {}", argv[0].to_string_lossy()), e))
}

/// The exit code a shell would report for `status` (128 + signal number when killed).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}
