//! `stacko`: the command line. Every command reaches the store through
//! [`stacko::connect`] (the daemon), except the hidden `daemon` command,
//! which is the daemon.
//!
//! Errors print one line, `stacko: error: MESSAGE`, on stderr and exit 1;
//! usage errors exit 2 (clap's convention).

mod output;
mod progress;
mod spcmd;
mod spoutput;

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use stacko::{Api, Dest, ExportRequest, ImportRequest, NoProgress, Progress, Source};

use crate::progress::Bar;

/// Stackable filesystem images: layers that stack on a parent, thin
/// copy-on-write instances, and named mount points.
#[derive(Parser)]
#[command(name = "stacko", version)]
struct Cli {
    /// Where stacko keeps its state [default: $STACKO_HOME; /var/lib/stacko
    /// for root; else $XDG_DATA_HOME/stacko or ~/.local/share/stacko]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty, open image on top of PARENT (or of nothing)
    NewImage {
        /// The new image's name
        name: String,
        /// The image it stacks on
        parent: Option<String>,
    },
    /// Delete an image (refused while another image stacks on it)
    DeleteImage {
        /// The image to delete
        name: String,
    },
    /// List images: NAME PARENT STATE SIZE FILES CREATED
    ListImages {
        /// Draw the parent/child forest
        #[arg(long)]
        tree: bool,
        /// Print JSON (fields: name, parent, state, size, files, created, created_unix)
        #[arg(long)]
        json: bool,
    },
    /// Make a sealed image from a directory or a tar archive (plain, gzip or zstd)
    ImportImage {
        /// The new image's name
        name: String,
        /// A directory, an archive file, or `-` for an archive on stdin
        #[arg(value_name = "SOURCE")]
        source: PathBuf,
        /// The image it stacks on
        #[arg(long, value_name = "IMAGE")]
        parent: Option<String>,
    },
    /// Write an image as a tar archive (its own layer, with OCI whiteouts)
    ExportImage {
        /// The image to export
        name: String,
        /// A file to write, or `-` for stdout
        #[arg(value_name = "DEST")]
        dest: PathBuf,
        /// Export the merged tree of the whole stack
        #[arg(long)]
        flatten: bool,
        /// Replace DEST if it exists
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Sp(spcmd::SpCommand),
    /// Run the daemon that owns the store (started on demand by every command)
    #[command(hide = true)]
    Daemon {
        /// Also log to stderr
        #[arg(long)]
        foreground: bool,
    },
    /// Ask a running daemon to finish its work and exit
    #[command(hide = true)]
    DaemonStop,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("stacko: error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes to stdout; a closed pipe (`| head`) ends the command quietly.
fn print(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn run(cli: Cli) -> Result<ExitCode> {
    let home = stacko::home::resolve(cli.home.as_deref())?;
    let command = match cli.command {
        Command::Sp(c) => return spcmd::run(&home, c),
        other => other,
    };
    images_command(&home, command)?;
    Ok(ExitCode::SUCCESS)
}

fn images_command(home: &Path, command: Command) -> Result<()> {
    let home = home.to_path_buf();
    match command {
        Command::Sp(c) => {
            spcmd::run(&home, c)?;
            Ok(())
        }
        Command::Daemon { foreground } => {
            stacko::daemon::run(&home, &stacko::daemon::DaemonOptions::from_env(foreground))?;
            Ok(())
        }
        Command::DaemonStop => {
            if let Some(c) = stacko::Client::connect_running(&home)? {
                c.shutdown()?;
            }
            Ok(())
        }
        Command::NewImage { name, parent } => {
            stacko::connect(&home)?.new_image(&name, parent.as_deref())?;
            Ok(())
        }
        Command::DeleteImage { name } => {
            stacko::connect(&home)?.delete_image(&name)?;
            Ok(())
        }
        Command::ListImages { tree, json } => {
            let images = stacko::connect(&home)?.list_images()?;
            let text = match (tree, json) {
                (false, false) => output::images_table(&images),
                (true, false) => output::images_tree(&images),
                (false, true) => json_text(&output::images_json(&images))?,
                (true, true) => json_text(&output::images_tree_json(&images))?,
            };
            print(&text)
        }
        Command::ImportImage {
            name,
            source,
            parent,
        } => {
            let source = if is_dash(&source) {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    bail!(
                        "refusing to read an archive from a terminal: pipe one in, \
                         or give a file or directory instead of `-`"
                    );
                }
                Source::Fd(
                    stdin
                        .as_fd()
                        .try_clone_to_owned()
                        .context("cannot use stdin")?,
                )
            } else {
                Source::Path(source)
            };
            let api = stacko::connect(&home)?;
            let bar = Bar::on_terminal("importing");
            let progress: &dyn Progress = match &bar {
                Some(b) => b,
                None => &NoProgress,
            };
            let info = api.import_image(
                ImportRequest {
                    name,
                    parent,
                    source,
                },
                progress,
            );
            if let Some(b) = &bar {
                b.finish();
            }
            let info = info?;
            print(&format!(
                "imported {}: {} files, {}\n",
                info.name,
                info.files,
                output::human_size(info.size)
            ))
        }
        Command::ExportImage {
            name,
            dest,
            flatten,
            force,
        } => {
            let dest = if is_dash(&dest) {
                let stdout = std::io::stdout();
                if stdout.is_terminal() {
                    bail!(
                        "refusing to write a tar archive to a terminal: redirect standard \
                         output to a file or a pipe, or give a file name instead of `-`"
                    );
                }
                Dest::Fd(
                    stdout
                        .as_fd()
                        .try_clone_to_owned()
                        .context("cannot use stdout")?,
                )
            } else {
                Dest::Path { path: dest, force }
            };
            let api = stacko::connect(&home)?;
            let bar = Bar::on_terminal("exporting");
            let progress: &dyn Progress = match &bar {
                Some(b) => b,
                None => &NoProgress,
            };
            let done = api.export_image(
                ExportRequest {
                    name,
                    flatten,
                    dest,
                },
                progress,
            );
            if let Some(b) = &bar {
                b.finish();
            }
            Ok(done?)
        }
    }
}

fn json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}
