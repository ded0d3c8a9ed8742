//! The image commands, served by [`Service`].

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use stacko_store::progress::Progress;
use stacko_store::{ingest, tar, validate_name, ImageState, LayerId};

use crate::api::{
    Api, Backend, Dest, ExportRequest, ImageInfo, ImportRequest, InstanceInfo, NewStackpoint,
    RunPlan, Source, StackpointInfo,
};
use crate::error::{Error, Result};
use crate::service::{Cancel, Cancellable, NeverCancel, Service};

fn is_terminal(fd: &OwnedFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io(format!("cannot resolve {}", p.display()), e))
}

impl Service {
    /// Checks an image name and an optional parent: both valid, the name
    /// free, the parent present. Nothing is read or changed.
    fn check_new(&self, name: &str, parent: Option<&str>) -> Result<()> {
        validate_name(name)?;
        if let Some(p) = parent {
            validate_name(p)?;
            if crate::edit::is_editing(self.home(), p) {
                return Err(Error::Refused(format!(
                    "image {p} is being edited: close-image {p} before stacking images on it"
                )));
            }
        }
        Ok(self.store().check_new_image(name, parent)?)
    }

    /// [`Api::import_image`], abandoned (nothing committed) once `cancel` is set.
    pub fn import_image_with(
        &self,
        req: ImportRequest,
        progress: &dyn Progress,
        cancel: &dyn Cancel,
    ) -> Result<ImageInfo> {
        let ImportRequest {
            name,
            parent,
            source,
        } = req;
        let _shared = self.shared();
        // Names first: a bad name fails before any input is read.
        self.check_new(&name, parent.as_deref())?;
        let built = match source {
            Source::Path(p) => {
                let p = absolute(&p)?;
                let meta = fs::metadata(&p).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        Error::NotFound(format!("source {} does not exist", p.display()))
                    }
                    _ => Error::io(format!("cannot read source {}", p.display()), e),
                })?;
                if meta.is_dir() {
                    ingest::ingest_dir(self.store(), &p, progress)
                } else if meta.is_file() {
                    let f = File::open(&p)
                        .map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
                    let mut input = Cancellable {
                        inner: BufReader::with_capacity(1 << 20, f),
                        cancel,
                    };
                    tar::import_tar(self.store(), &mut input, progress)
                } else {
                    return Err(Error::Invalid(format!(
                        "source {} is neither a directory nor an archive file",
                        p.display()
                    )));
                }
            }
            Source::Fd(fd) => {
                if is_terminal(&fd) {
                    return Err(Error::Refused(
                        "refusing to read an archive from a terminal: pipe one in, \
                         or give a file or directory instead of `-`"
                            .into(),
                    ));
                }
                let mut input = Cancellable {
                    inner: BufReader::with_capacity(1 << 20, File::from(fd)),
                    cancel,
                };
                tar::import_tar(self.store(), &mut input, progress)
            }
        };
        // A failed build removes its own layer; a finished one not committed is discarded.
        let layer = built?;
        if cancel.confirm_cancelled() {
            self.store().discard_layer(&layer)?;
            return Err(Error::Refused(
                "the client went away: import abandoned".into(),
            ));
        }
        let rec =
            self.store()
                .commit_image(&name, parent.as_deref(), &layer, ImageState::Sealed)?;
        Ok(ImageInfo::from(rec))
    }

    /// [`Api::export_image`], abandoned once `cancel` is set; a partly
    /// written destination file is removed.
    pub fn export_image_with(
        &self,
        req: ExportRequest,
        progress: &dyn Progress,
        cancel: &dyn Cancel,
    ) -> Result<()> {
        let ExportRequest {
            name,
            flatten,
            dest,
        } = req;
        validate_name(&name)?;
        let _shared = self.shared();
        let chain = self.store().image_chain(&name)?;
        let Some(top) = chain.first() else {
            return Err(stacko_store::Error::NotFound {
                what: "image",
                name,
            }
            .into());
        };
        let (layers, total): (Vec<LayerId>, u64) = if flatten {
            (
                chain.iter().map(|r| r.layer).collect(),
                chain.iter().map(|r| r.size).sum(),
            )
        } else {
            (vec![top.layer], top.size)
        };
        match dest {
            Dest::Fd(fd) => {
                if is_terminal(&fd) {
                    return Err(Error::Refused(
                        "refusing to write a tar archive to a terminal: redirect standard \
                         output to a file or a pipe, or give a file name instead of `-`"
                            .into(),
                    ));
                }
                progress.set_total(total);
                let mut out = Cancellable {
                    inner: BufWriter::with_capacity(1 << 20, File::from(fd)),
                    cancel,
                };
                tar::export_tar(self.store(), &layers, flatten, &mut out, progress)?;
                out.flush()
                    .map_err(|e| Error::io("cannot write the archive to standard output", e))
            }
            Dest::Path { path, force } => {
                let path = absolute(&path)?;
                let tmp = TempFile::create_beside(&path, force)?;
                progress.set_total(total);
                let file = tmp.file()?;
                let mut out = Cancellable {
                    inner: BufWriter::with_capacity(1 << 20, file),
                    cancel,
                };
                tar::export_tar(self.store(), &layers, flatten, &mut out, progress)?;
                let file = out.inner.into_inner().map_err(|e| {
                    Error::io(
                        format!("cannot write {}", tmp.path.display()),
                        e.into_error(),
                    )
                })?;
                file.sync_all()
                    .map_err(|e| Error::io(format!("cannot write {}", tmp.path.display()), e))?;
                if cancel.confirm_cancelled() {
                    return Err(Error::Refused(
                        "the client went away: export abandoned".into(),
                    ));
                }
                tmp.persist(&path, force)
            }
        }
    }
}

/// A temp file beside a destination; removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    fn create_beside(dest: &Path, force: bool) -> Result<TempFile> {
        let shown = dest.display();
        let (Some(dir), Some(fname)) = (dest.parent(), dest.file_name()) else {
            return Err(Error::Invalid(format!("{shown} is not a file name")));
        };
        if dest.as_os_str().as_bytes().ends_with(b"/") {
            return Err(Error::Invalid(format!(
                "{shown} is a directory: give a file name"
            )));
        }
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {
                return Err(Error::Invalid(format!(
                    "{shown} is a directory: give a file name"
                )))
            }
            Ok(_) if !force => {
                return Err(Error::Exists(format!(
                    "{shown} already exists: pass --force to replace it"
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot check {shown}"), e)),
        }
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tname = std::ffi::OsString::from(".");
        tname.push(fname);
        tname.push(format!(".stacko-tmp.{}.{n}", std::process::id()));
        let path = dir.join(tname);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(format!(
                    "cannot write {shown}: directory {} does not exist",
                    dir.display()
                )),
                _ => Error::io(format!("cannot create a file in {}", dir.display()), e),
            })?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    fn file(&self) -> Result<File> {
        match &self.file {
            Some(f) => f
                .try_clone()
                .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e)),
            None => Err(Error::Invalid("temp file already closed".into())),
        }
    }

    fn persist(mut self, dest: &Path, force: bool) -> Result<()> {
        self.file = None;
        let shown = dest.display();
        if force {
            fs::rename(&self.path, dest)
                .map_err(|e| Error::io(format!("cannot move the archive to {shown}"), e))?;
        } else {
            rename_noreplace(&self.path, dest).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists(format!(
                    "{shown} already exists: pass --force to replace it"
                )),
                _ => Error::io(format!("cannot move the archive to {shown}"), e),
            })?;
        }
        // Persisted: nothing left for Drop to remove.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Renames `from` to `to` unless `to` exists (renameat2 RENAME_NOREPLACE,
/// or a hard link where the filesystem lacks it).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(e),
    }
}

impl Api for Service {
    fn new_image(&self, name: &str, parent: Option<&str>) -> Result<ImageInfo> {
        let _shared = self.shared();
        self.check_new(name, parent)?;
        Ok(self.store().create_image(name, parent)?.into())
    }

    fn delete_image(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let _state = self.state_lock();
        if crate::edit::is_editing(self.home(), name) {
            return Err(Error::Refused(format!(
                "image {name} is being edited: close-image {name} first"
            )));
        }
        let _exclusive = self.exclusive();
        let layer = self.store().image(name)?.map(|r| r.layer);
        self.store().delete_image(name)?;
        if let Some(layer) = layer {
            crate::checkouts::remove(self.store(), layer);
        }
        Ok(())
    }

    fn list_images(&self) -> Result<Vec<ImageInfo>> {
        Ok(self
            .store()
            .images()?
            .into_iter()
            .map(ImageInfo::from)
            .collect())
    }

    fn import_image(&self, req: ImportRequest, progress: &dyn Progress) -> Result<ImageInfo> {
        self.import_image_with(req, progress, &NeverCancel)
    }

    fn export_image(&self, req: ExportRequest, progress: &dyn Progress) -> Result<()> {
        self.export_image_with(req, progress, &NeverCancel)
    }

    fn edit_image(&self, name: &str, backend: Option<Backend>) -> Result<PathBuf> {
        self.image_edit(name, backend)
    }

    fn close_image(&self, name: &str, progress: &dyn Progress) -> Result<ImageInfo> {
        self.image_close(name, progress)
    }

    fn image_dir(&self, name: &str) -> Result<PathBuf> {
        self.image_edit_dir(name)
    }

    fn new_stackpoint(&self, req: &NewStackpoint) -> Result<StackpointInfo> {
        self.sp_new(req)
    }

    fn delete_stackpoint(&self, name: &str) -> Result<()> {
        self.sp_delete(name)
    }

    fn new_instance(&self, name: &str, image: &str) -> Result<InstanceInfo> {
        self.sp_new_instance(name, image)
    }

    fn set_instance(&self, name: &str, id: u64) -> Result<StackpointInfo> {
        self.sp_set(name, id)
    }

    fn delete_instance(&self, name: &str, id: u64) -> Result<()> {
        self.sp_delete_instance(name, id)
    }

    fn cutover(&self, name: &str, image: &str, reuse: bool) -> Result<StackpointInfo> {
        self.sp_cutover(name, image, reuse)
    }

    fn fallback(&self, name: &str, to: Option<u64>) -> Result<StackpointInfo> {
        self.sp_fallback(name, to)
    }

    fn mount_stackpoint(&self, name: &str, backend: Option<Backend>) -> Result<StackpointInfo> {
        self.sp_mount(name, backend)
    }

    fn umount_stackpoint(&self, name: &str, lazy: bool) -> Result<()> {
        self.sp_umount(name, lazy)
    }

    fn stackpoint_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.existing_stackpoint(name)?.dir_path())
    }

    fn is_stackpoint_mounted(&self, name: &str) -> Result<bool> {
        self.sp_is_mounted(name)
    }

    fn list_stackpoints(&self) -> Result<Vec<StackpointInfo>> {
        self.sp_list()
    }

    fn list_instances(&self, name: Option<&str>) -> Result<Vec<InstanceInfo>> {
        self.sp_list_instances(name)
    }

    fn prepare_run(&self, name: &str) -> Result<RunPlan> {
        self.sp_prepare_run(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use stacko_store::progress::NoProgress;

    fn service() -> (tempfile::TempDir, Service) {
        let t = tempfile::tempdir().unwrap();
        let s = Service::open(&t.path().join("home")).unwrap();
        (t, s)
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), vec![5u8; 10_000]).unwrap();
        fs::write(root.join("g"), b"g").unwrap();
    }

    #[test]
    fn commands_in_process() {
        let (t, s) = service();
        s.new_image("base", None).unwrap();
        let src = t.path().join("src");
        tree(&src);
        let req = ImportRequest {
            name: "app".into(),
            parent: Some("base".into()),
            source: Source::Path(src),
        };
        let info = s.import_image(req, &NoProgress).unwrap();
        assert_eq!(
            (info.files, info.size, info.state),
            (2, 10_001, ImageState::Sealed)
        );
        let names: Vec<String> = s
            .list_images()
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["app", "base"]);
        let e = s.delete_image("base").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        let e = s.new_image("app", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists);
        let e = s.new_image("x", Some("nope")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = s.new_image("a/b", None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);

        let dest = t.path().join("app.tar");
        let export = |force| ExportRequest {
            name: "app".into(),
            flatten: false,
            dest: Dest::Path {
                path: dest.clone(),
                force,
            },
        };
        s.export_image(export(false), &NoProgress).unwrap();
        let first = fs::read(&dest).unwrap();
        assert!(first.len() > 10_000);
        let e = s.export_image(export(false), &NoProgress).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists);
        s.export_image(export(true), &NoProgress).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), first);
        s.delete_image("app").unwrap();
        s.delete_image("base").unwrap();
        assert!(s.list_images().unwrap().is_empty());
    }

    #[test]
    fn cancelled_import_commits_nothing_and_leaves_no_layer() {
        let (t, s) = service();
        let src = t.path().join("src");
        tree(&src);
        let layers_before = s.store().layer_records().unwrap().len();
        let cancel = std::sync::atomic::AtomicBool::new(true);
        let req = ImportRequest {
            name: "c".into(),
            parent: None,
            source: Source::Path(src.clone()),
        };
        let e = s.import_image_with(req, &NoProgress, &cancel).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert!(s.store().image("c").unwrap().is_none());
        assert_eq!(s.store().layer_records().unwrap().len(), layers_before);
        // The same import, not cancelled, works.
        let req = ImportRequest {
            name: "c".into(),
            parent: None,
            source: Source::Path(src),
        };
        s.import_image(req, &NoProgress).unwrap();
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_file() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"b");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read(&b).unwrap(), b"a");
    }

    #[test]
    fn failed_export_leaves_nothing() {
        let (t, s) = service();
        let dir = t.path().join("out");
        fs::create_dir_all(&dir).unwrap();
        let req = ExportRequest {
            name: "missing".into(),
            flatten: false,
            dest: Dest::Path {
                path: dir.join("x.tar"),
                force: false,
            },
        };
        assert_eq!(
            s.export_image(req, &NoProgress).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        s.new_image("img", None).unwrap();
        let cancel = std::sync::atomic::AtomicBool::new(true);
        let req = ExportRequest {
            name: "img".into(),
            flatten: false,
            dest: Dest::Path {
                path: dir.join("y.tar"),
                force: false,
            },
        };
        assert!(s.export_image_with(req, &NoProgress, &cancel).is_err());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "a temp or partial file was left"
        );
    }
}
