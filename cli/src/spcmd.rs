//! The image-editing, stackpoint and instance commands, and `stacko run`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use stacko::{Api, Backend, NewStackpoint, NoProgress};

use crate::{json_text, print, spoutput};

/// The commands of this module (flattened into the top-level command list).
#[derive(Subcommand)]
pub enum SpCommand {
    /// Mount an image writable over its parent stack and print the directory to edit
    EditImage {
        /// The image
        name: String,
        /// Mount with this engine instead of the automatic choice
        #[arg(long, value_parser = parse_backend, value_name = "kernel|fuse")]
        backend: Option<Backend>,
    },
    /// Unmount an image being edited, commit the edits into it and seal it
    CloseImage {
        /// The image
        name: String,
    },
    /// Print the directory of an image being edited
    GetImageDir {
        /// The image
        name: String,
    },
    /// Create a stackpoint showing a new instance of IMAGE; prints the instance id
    NewStackpoint {
        /// The stackpoint's name
        name: String,
        /// The image of its first instance
        image: String,
        /// Mount directory [default: HOME/stackpoints/NAME]; created if missing
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
        /// Accept a --dir that is not empty (the mount hides what it holds)
        #[arg(long)]
        force: bool,
    },
    /// Delete a stackpoint and all its instances (unmounting it first)
    DeleteStackpoint {
        /// The stackpoint
        name: String,
    },
    /// Add an instance of IMAGE to a stackpoint (not made current); prints its id
    NewStackpointInstance {
        /// The stackpoint
        name: String,
        /// The image
        image: String,
    },
    /// Make an instance the current one (remounting if mounted)
    SetStackpointInstance {
        /// The stackpoint
        name: String,
        /// The instance id
        instance: String,
    },
    /// Delete an instance that is not the current one
    DeleteStackpointInstance {
        /// The stackpoint
        name: String,
        /// The instance id
        instance: String,
    },
    /// Switch to a new instance of IMAGE (remounting if mounted); prints its id
    #[command(visible_alias = "cutover-stackpoint-instance")]
    CutoverStackpoint {
        /// The stackpoint
        name: String,
        /// The image to switch to
        image: String,
        /// Reuse the latest existing instance of IMAGE instead of making one
        #[arg(long)]
        reuse: bool,
    },
    /// Go back to the previous instance in the history (remounting if mounted); prints its id
    #[command(visible_alias = "fallback-stackpoint-instance")]
    FallbackStackpoint {
        /// The stackpoint
        name: String,
        /// Go to this instance instead
        #[arg(long, value_name = "INSTANCE")]
        to: Option<String>,
    },
    /// Mount a stackpoint's current instance at its directory
    MountStackpoint {
        /// The stackpoint
        name: String,
        /// Mount with this engine (remembered for later mounts)
        #[arg(long, value_parser = parse_backend, value_name = "kernel|fuse")]
        backend: Option<Backend>,
    },
    /// Unmount a stackpoint
    #[command(visible_alias = "unmount-stackpoint")]
    UmountStackpoint {
        /// The stackpoint
        name: String,
        /// Detach even if files are open there
        #[arg(long)]
        lazy: bool,
    },
    /// Print a stackpoint's mount directory
    GetStackpointDir {
        /// The stackpoint
        name: String,
    },
    /// Exit 0 if the stackpoint is mounted, 1 if not
    IsStackpointMounted {
        /// The stackpoint
        name: String,
    },
    /// List stackpoints: NAME INSTANCE IMAGE MOUNTED DIR
    ListStackpoints {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List the instances of one stackpoint, or of all: ID STACKPOINT IMAGE CURRENT CREATED
    ListInstances {
        /// The stackpoint (all when omitted)
        name: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Run a command with the stackpoint mounted (in a user namespace where
    /// nothing else can mount); exits with the command's status
    Run {
        /// The stackpoint
        name: String,
        /// Mount with this engine instead of the automatic choice
        #[arg(long, value_parser = parse_backend, value_name = "kernel|fuse")]
        backend: Option<Backend>,
        /// The command and its arguments (after `--`)
        #[arg(required = true, last = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
}

fn parse_backend(s: &str) -> std::result::Result<Backend, String> {
    s.parse::<Backend>().map_err(|e| e.to_string())
}

fn parse_instance(s: &str) -> Result<u64> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!(
            "invalid instance {s:?}: give the number printed by new-stackpoint-instance \
             or shown by list-instances"
        ),
    }
}

fn line(s: impl std::fmt::Display) -> Result<()> {
    print(&format!("{s}\n"))
}

/// Runs one of these commands.
pub fn run(home: &Path, cmd: SpCommand) -> Result<ExitCode> {
    let api = stacko::connect(home)?;
    match cmd {
        SpCommand::EditImage { name, backend } => line(api.edit_image(&name, backend)?.display())?,
        SpCommand::CloseImage { name } => {
            api.close_image(&name, &NoProgress)?;
        }
        SpCommand::GetImageDir { name } => line(api.image_dir(&name)?.display())?,
        SpCommand::NewStackpoint {
            name,
            image,
            dir,
            force,
        } => {
            let info = api.new_stackpoint(&NewStackpoint {
                name,
                image,
                dir,
                force,
            })?;
            line(info.current)?
        }
        SpCommand::DeleteStackpoint { name } => api.delete_stackpoint(&name)?,
        SpCommand::NewStackpointInstance { name, image } => {
            line(api.new_instance(&name, &image)?.id)?
        }
        SpCommand::SetStackpointInstance { name, instance } => {
            api.set_instance(&name, parse_instance(&instance)?)?;
        }
        SpCommand::DeleteStackpointInstance { name, instance } => {
            api.delete_instance(&name, parse_instance(&instance)?)?
        }
        SpCommand::CutoverStackpoint { name, image, reuse } => {
            line(api.cutover(&name, &image, reuse)?.current)?
        }
        SpCommand::FallbackStackpoint { name, to } => {
            let to = to.as_deref().map(parse_instance).transpose()?;
            line(api.fallback(&name, to)?.current)?
        }
        SpCommand::MountStackpoint { name, backend } => {
            api.mount_stackpoint(&name, backend)?;
        }
        SpCommand::UmountStackpoint { name, lazy } => api.umount_stackpoint(&name, lazy)?,
        SpCommand::GetStackpointDir { name } => line(api.stackpoint_dir(&name)?.display())?,
        SpCommand::IsStackpointMounted { name } => {
            return Ok(if api.is_stackpoint_mounted(&name)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        SpCommand::ListStackpoints { json } => {
            let sps = api.list_stackpoints()?;
            let text = if json {
                json_text(&spoutput::stackpoints_json(&sps))?
            } else {
                spoutput::stackpoints_table(&sps)
            };
            print(&text)?
        }
        SpCommand::ListInstances { name, json } => {
            let insts = api.list_instances(name.as_deref())?;
            let text = if json {
                json_text(&spoutput::instances_json(&insts))?
            } else {
                spoutput::instances_table(&insts)
            };
            print(&text)?
        }
        SpCommand::Run {
            name,
            backend,
            command,
        } => {
            let status = stacko::run::run(&api, &name, backend, &command)?;
            drop(api);
            let code = stacko::run::exit_code(status);
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
    }
    Ok(ExitCode::SUCCESS)
}
