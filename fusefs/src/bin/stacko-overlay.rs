//! `stacko-overlay`: mount a stack of directories as one merged filesystem, with the
//! interface of fuse-overlayfs.
//!
//! ```text
//! stacko-overlay [-f] [-o lowerdir=A:B,upperdir=U,workdir=W[,...]] MOUNTPOINT
//! stacko-overlay SOURCE MOUNTPOINT -o OPTIONS      (as mount -t fuse.stacko-overlay runs it)
//! ```
//!
//! Without `-f` the program detaches once the mount is up (mount errors are reported before
//! that, with a non-zero exit). SIGTERM, SIGINT and SIGHUP unmount cleanly.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use stacko_fusefs::config::MountConfig;
use stacko_fusefs::fuse;
use stacko_fusefs::OverlayFs;

const USAGE: &str = "usage: stacko-overlay [-f] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTION...] MOUNTPOINT
       stacko-overlay SOURCE MOUNTPOINT -o OPTIONS
options: squash_to_uid=N squash_to_gid=N squash_to_root metacopy=on|off redirect_dir=on|off
         index=on|off threads=N passthrough=on|off writeback=on|off allow_other ro
         fsname=NAME timeout=SECONDS, and the generic dev/nodev/suid/nosuid/exec/noexec/noatime";

struct Args {
    foreground: bool,
    config: MountConfig,
    mountpoint: PathBuf,
}

fn parse_args(argv: Vec<OsString>) -> Result<Args> {
    let mut foreground = false;
    let mut opts: Vec<String> = Vec::new();
    let mut positional: Vec<OsString> = Vec::new();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        match s.as_str() {
            "-f" | "--foreground" => foreground = true,
            "-d" | "--debug" => foreground = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("stacko-overlay {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-o" => {
                let v = it.next().context("-o needs an argument")?;
                opts.push(
                    v.into_string()
                        .map_err(|_| anyhow::anyhow!("-o argument is not valid UTF-8"))?,
                );
            }
            x if x.starts_with("-o") && x.len() > 2 => opts.push(x[2..].to_string()),
            // mount(8) helpers may pass these; they have no meaning here
            "-n" | "-s" | "-v" => {}
            x if x.starts_with('-') && x.len() > 1 => bail!("unknown argument {x:?}\n{USAGE}"),
            _ => positional.push(a),
        }
    }
    let mountpoint = match positional.len() {
        1 => positional.remove(0),
        2 => positional.remove(1),
        0 => bail!("missing MOUNTPOINT\n{USAGE}"),
        _ => bail!("too many arguments\n{USAGE}"),
    };
    let mut config = MountConfig::default();
    for o in &opts {
        config.apply(o)?;
    }
    config.validate()?;
    let mountpoint = PathBuf::from(mountpoint);
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    Ok(Args {
        foreground,
        config,
        mountpoint,
    })
}

fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn daemonize() -> Result<()> {
    // Safe here: no other thread runs yet (the serving threads start after this).
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {}
        _ => unsafe { libc::_exit(0) },
    }
    unsafe {
        libc::setsid();
        let _ = libc::chdir(c"/".as_ptr());
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    let args = parse_args(std::env::args_os().skip(1).collect())?;
    unsafe { libc::umask(0) };
    stacko_fusefs::sys::raise_nofile_limit();
    let fs = OverlayFs::from_config(&args.config)?;
    let plan = fuse::plan(&args.config);
    let sigs = block_signals();
    let mounted = fuse::mount(Arc::new(fs), &args.config, &plan, &args.mountpoint)
        .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;
    if !args.foreground {
        daemonize()?;
    }
    let unmounter = mounted.unmounter();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            if unsafe { libc::sigwait(&sigs, &mut sig) } == 0 {
                let _ = unmounter.unmount();
            }
        })
        .context("cannot start the signal thread")?;
    mounted.run().context("serving the filesystem")?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("stacko-overlay: {e:#}");
        std::process::exit(1);
    }
}
