//! The messages between the CLI ([`crate::Client`]) and the daemon, and their framing.
//!
//! # Frames
//!
//! ```text
//! u32 big-endian length N | 1 byte PROTOCOL_VERSION | N-1 bytes postcard body
//! ```
//!
//! `N` counts the version byte and the body and may not exceed
//! [`MAX_FRAME`]. A body must decode completely: trailing bytes are an
//! error. Descriptors (stdin for `import-image NAME -`, stdout for
//! `export-image NAME -`) travel with the request frame as `SCM_RIGHTS`
//! (see [`crate::fdpass`]).
//!
//! # Conversation
//!
//! The client opens with [`Request::Hello`] carrying its [`crate::buildid`];
//! the daemon answers [`Response::Hello`]. A daemon that gets a frame of
//! another protocol version, or a Hello with another build id, answers with
//! an error and retires: it stops accepting, finishes what is in progress
//! and exits, so that the client can start a daemon of its own build.
//! Then any number of requests follow, one at a time; each gets zero or
//! more [`Response::Progress`] frames and then exactly one final response.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::api::{Backend, ImageInfo, InstanceInfo, NewStackpoint, RunPlan, StackpointInfo};
use crate::error::ErrorKind;

/// The version byte in front of every frame body.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest frame accepted (version byte and body), in bytes.
pub const MAX_FRAME: usize = 16 << 20;

/// A path on the wire: raw bytes, so that non-UTF-8 paths survive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WirePath(pub Vec<u8>);

impl From<&Path> for WirePath {
    fn from(p: &Path) -> Self {
        WirePath(p.as_os_str().as_bytes().to_vec())
    }
}

impl WirePath {
    /// Back to a path.
    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&self.0))
    }
}

/// Where an import reads from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WireSource {
    /// An absolute path: a directory or an archive file.
    Path(WirePath),
    /// The descriptor sent with this request (the client's stdin).
    Fd,
}

/// Where an export writes to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WireDest {
    /// An absolute file path; `force` allows replacing an existing file.
    Path {
        /// The file to write.
        path: WirePath,
        /// Replace an existing file.
        force: bool,
    },
    /// The descriptor sent with this request (the client's stdout).
    Fd,
}

/// What the client asks. Variants are only ever appended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Opens every connection.
    Hello {
        /// The client binary's build id.
        build_id: String,
    },
    /// Asks the daemon to retire (finish what is running, then exit).
    Shutdown,
    /// `new-image NAME [PARENT]`.
    NewImage {
        /// The new image.
        name: String,
        /// Its parent.
        parent: Option<String>,
    },
    /// `delete-image NAME`.
    DeleteImage {
        /// The image to delete.
        name: String,
    },
    /// `list-images`.
    ListImages,
    /// `import-image NAME SOURCE [--parent P]`.
    ImportImage {
        /// The new image.
        name: String,
        /// Its parent.
        parent: Option<String>,
        /// What to read.
        source: WireSource,
    },
    /// `export-image NAME DEST [--flatten]`.
    ExportImage {
        /// The image to export.
        name: String,
        /// The whole stack merged, not only the image's own layer.
        flatten: bool,
        /// Where to write.
        dest: WireDest,
    },
    /// `edit-image NAME [--backend B]`.
    EditImage {
        /// The image.
        name: String,
        /// The engine to mount with (automatic if `None`).
        backend: Option<Backend>,
    },
    /// `close-image NAME`.
    CloseImage {
        /// The image.
        name: String,
    },
    /// `get-image-dir NAME`.
    GetImageDir {
        /// The image.
        name: String,
    },
    /// The stackpoint and instance commands.
    Stackpoint(StackpointRequest),
}

/// The stackpoint and instance commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum StackpointRequest {
    /// `new-stackpoint NAME IMAGE [--dir PATH] [--force]` (the dir absolute).
    New(NewStackpoint),
    /// `delete-stackpoint NAME`.
    Delete {
        /// Stackpoint.
        name: String,
    },
    /// `cutover-stackpoint NAME IMAGE [--reuse]`.
    Cutover {
        /// Stackpoint.
        name: String,
        /// The image to switch to.
        image: String,
        /// Reuse the latest existing instance of it.
        reuse: bool,
    },
    /// `fallback-stackpoint NAME [--to INSTANCE]`.
    Fallback {
        /// Stackpoint.
        name: String,
        /// The instance to go back to.
        to: Option<u64>,
    },
    /// `new-stackpoint-instance NAME IMAGE`.
    NewInstance {
        /// Stackpoint.
        name: String,
        /// Image.
        image: String,
    },
    /// `set-stackpoint-instance NAME INSTANCE`.
    SetInstance {
        /// Stackpoint.
        name: String,
        /// Instance.
        instance: u64,
    },
    /// `delete-stackpoint-instance NAME INSTANCE`.
    DeleteInstance {
        /// Stackpoint.
        name: String,
        /// Instance.
        instance: u64,
    },
    /// `mount-stackpoint NAME [--backend B]`.
    Mount {
        /// Stackpoint.
        name: String,
        /// The engine (remembered for later mounts); automatic if `None`.
        backend: Option<Backend>,
    },
    /// `umount-stackpoint NAME [--lazy]`.
    Umount {
        /// Stackpoint.
        name: String,
        /// Detach even when busy.
        lazy: bool,
    },
    /// `get-stackpoint-dir NAME`.
    GetDir {
        /// Stackpoint.
        name: String,
    },
    /// `is-stackpoint-mounted NAME`.
    IsMounted {
        /// Stackpoint.
        name: String,
    },
    /// `list-stackpoints`.
    List,
    /// `list-instances [NAME]`.
    ListInstances {
        /// Stackpoint (all when `None`).
        name: Option<String>,
    },
    /// `stacko run NAME -- ...`: prepare the checkouts, say what to mount.
    PrepareRun {
        /// Stackpoint.
        name: String,
    },
}

impl Request {
    /// The command's name, for the log and for errors.
    pub fn command(&self) -> &'static str {
        use crate::protocol::StackpointRequest as S;
        match self {
            Request::Hello { .. } => "hello",
            Request::Shutdown => "shutdown",
            Request::NewImage { .. } => "new-image",
            Request::DeleteImage { .. } => "delete-image",
            Request::ListImages => "list-images",
            Request::ImportImage { .. } => "import-image",
            Request::ExportImage { .. } => "export-image",
            Request::EditImage { .. } => "edit-image",
            Request::CloseImage { .. } => "close-image",
            Request::GetImageDir { .. } => "get-image-dir",
            Request::Stackpoint(s) => match s {
                S::New { .. } => "new-stackpoint",
                S::Delete { .. } => "delete-stackpoint",
                S::Cutover { .. } => "cutover-stackpoint",
                S::Fallback { .. } => "fallback-stackpoint",
                S::NewInstance { .. } => "new-stackpoint-instance",
                S::SetInstance { .. } => "set-stackpoint-instance",
                S::DeleteInstance { .. } => "delete-stackpoint-instance",
                S::Mount { .. } => "mount-stackpoint",
                S::Umount { .. } => "umount-stackpoint",
                S::GetDir { .. } => "get-stackpoint-dir",
                S::IsMounted { .. } => "is-stackpoint-mounted",
                S::List => "list-stackpoints",
                S::ListInstances { .. } => "list-instances",
                S::PrepareRun { .. } => "run",
            },
        }
    }
}

/// An error as it crosses the socket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    /// Its class.
    pub kind: ErrorKind,
    /// The one-line message for the user.
    pub message: String,
}

/// What the daemon answers. Variants are only ever appended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answers [`Request::Hello`].
    Hello {
        /// The daemon binary's build id.
        build_id: String,
        /// The daemon's process id.
        pid: u32,
    },
    /// Progress of a long operation, cumulative; zero or more before the final response.
    Progress {
        /// Bytes done so far.
        bytes: u64,
        /// Entries done so far.
        files: u64,
        /// Total bytes, once known.
        total: Option<u64>,
    },
    /// Done, nothing to return.
    Done,
    /// One image (new-image, import-image).
    Image(ImageInfo),
    /// All images (list-images).
    Images(Vec<ImageInfo>),
    /// The request failed.
    Error(WireError),
    /// A directory (edit-image, get-image-dir, get-stackpoint-dir).
    Path(WirePath),
    /// One stackpoint.
    Stackpoint(StackpointInfo),
    /// All stackpoints.
    Stackpoints(Vec<StackpointInfo>),
    /// One instance.
    Instance(InstanceInfo),
    /// Instances.
    Instances(Vec<InstanceInfo>),
    /// A yes/no answer (is-stackpoint-mounted).
    Bool(bool),
    /// What `stacko run` mounts.
    RunPlan(RunPlan),
}

/// What can be wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("the connection closed in the middle of a message")]
    Truncated,
    /// The length field exceeds [`MAX_FRAME`] (or is zero).
    #[error("message of {0} bytes refused (limit {MAX_FRAME})")]
    Size(u64),
    /// The peer speaks another protocol version.
    #[error("protocol version {got}, this build speaks {PROTOCOL_VERSION}")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The body did not decode.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The body decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Encodes `msg` as one complete frame (length, version, body).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    out.push(PROTOCOL_VERSION);
    let mut out = postcard::to_extend(msg, out).map_err(|e| FrameError::Decode(e.to_string()))?;
    let n = out.len() - 4;
    if n > MAX_FRAME {
        return Err(FrameError::Size(n as u64));
    }
    out[..4].copy_from_slice(&(n as u32).to_be_bytes());
    Ok(out)
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let bytes = encode_frame(msg)?;
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(())
}

/// Decodes a frame's body (after the length): version byte, then exactly one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Size(0))?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version });
    }
    let (msg, trailing) =
        postcard::take_from_bytes(rest).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(FrameError::Trailing(trailing.len()));
    }
    Ok(msg)
}

/// Reads one frame. `Ok(None)` when the stream ends cleanly before a frame
/// starts. A frame of another version is read whole before
/// [`FrameError::Version`] is returned; an oversize one is not read at all.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(FrameError::Size(n as u64));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_body(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stacko_store::{ImageState, Timestamp};
    use std::io::Cursor;

    fn info() -> ImageInfo {
        ImageInfo {
            name: "apps-1.0".into(),
            parent: Some("base".into()),
            state: ImageState::Sealed,
            created: Timestamp {
                sec: 1_700_000_000,
                nsec: 5,
            },
            size: 1 << 40,
            files: 3,
        }
    }

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
        let bytes = encode_frame(&msg).unwrap();
        let back: T = read_frame(&mut Cursor::new(&bytes)).unwrap().unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn frames_round_trip() {
        roundtrip(Request::Hello {
            build_id: "b".into(),
        });
        roundtrip(Request::ImportImage {
            name: "n".into(),
            parent: None,
            source: WireSource::Path(WirePath(b"/tmp/\xff".to_vec())),
        });
        roundtrip(Request::ExportImage {
            name: "n".into(),
            flatten: true,
            dest: WireDest::Fd,
        });
        roundtrip(Request::Stackpoint(StackpointRequest::List));
        roundtrip(Response::Images(vec![info(), info()]));
        roundtrip(Response::Progress {
            bytes: 7,
            files: 1,
            total: None,
        });
        roundtrip(Response::Error(WireError {
            kind: ErrorKind::Exists,
            message: "image \"x\" already exists".into(),
        }));
    }

    #[test]
    fn frame_layout_is_length_version_body() {
        let bytes = encode_frame(&Request::ListImages).unwrap();
        let n = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(n, bytes.len() - 4);
        assert_eq!(bytes[4], PROTOCOL_VERSION);
    }

    #[test]
    fn several_frames_in_a_stream_then_clean_eof() {
        let mut s = encode_frame(&Request::ListImages).unwrap();
        s.extend(encode_frame(&Request::Shutdown).unwrap());
        let mut c = Cursor::new(s);
        assert_eq!(
            read_frame::<Request>(&mut c).unwrap(),
            Some(Request::ListImages)
        );
        assert_eq!(
            read_frame::<Request>(&mut c).unwrap(),
            Some(Request::Shutdown)
        );
        assert_eq!(read_frame::<Request>(&mut c).unwrap(), None);
    }

    #[test]
    fn version_mismatch_is_detected_and_the_frame_consumed() {
        let mut a = encode_frame(&Request::ListImages).unwrap();
        a[4] = PROTOCOL_VERSION + 1;
        a.extend(encode_frame(&Request::Shutdown).unwrap());
        let mut c = Cursor::new(a);
        match read_frame::<Request>(&mut c) {
            Err(FrameError::Version { got }) => assert_eq!(got, PROTOCOL_VERSION + 1),
            other => panic!("expected a version error, got {other:?}"),
        }
        assert_eq!(
            read_frame::<Request>(&mut c).unwrap(),
            Some(Request::Shutdown)
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut a = encode_frame(&Request::ListImages).unwrap();
        a.push(0);
        let n = (a.len() - 4) as u32;
        a[..4].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(
            read_frame::<Request>(&mut Cursor::new(a)),
            Err(FrameError::Trailing(1))
        ));
    }

    #[test]
    fn oversize_and_empty_frames_are_refused_without_reading() {
        let mut a = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        a.push(PROTOCOL_VERSION);
        let mut c = Cursor::new(a);
        assert!(matches!(
            read_frame::<Request>(&mut c),
            Err(FrameError::Size(_))
        ));
        assert_eq!(
            c.position(),
            4,
            "the body of an oversize frame must not be read"
        );
        let z = 0u32.to_be_bytes().to_vec();
        assert!(matches!(
            read_frame::<Request>(&mut Cursor::new(z)),
            Err(FrameError::Size(0))
        ));
        let huge = Request::NewImage {
            name: "x".repeat(MAX_FRAME),
            parent: None,
        };
        assert!(matches!(encode_frame(&huge), Err(FrameError::Size(_))));
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let a = encode_frame(&Request::NewImage {
            name: "abc".into(),
            parent: None,
        })
        .unwrap();
        for cut in [2, 5, a.len() - 1] {
            assert!(
                matches!(
                    read_frame::<Request>(&mut Cursor::new(&a[..cut])),
                    Err(FrameError::Truncated)
                ),
                "cut at {cut}"
            );
        }
        let mut g = 3u32.to_be_bytes().to_vec();
        g.extend([PROTOCOL_VERSION, 250, 250]);
        assert!(matches!(
            read_frame::<Request>(&mut Cursor::new(g)),
            Err(FrameError::Decode(_))
        ));
    }
}
