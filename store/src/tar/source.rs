//! The byte stream under the tar reader: compression detected from the
//! first bytes, the source's own I/O errors told apart from corrupt data,
//! and a [`Tap`] that notes the end of the stream and records the header
//! blocks the tar crate reads between entries (so that PAX records can be
//! parsed by length; see [`super::pax`]).

use std::cell::RefCell;
use std::io::{self, Cursor, Read};
use std::rc::Rc;

use crate::error::{Error, Result};

/// Header bytes recorded for one entry are refused beyond this (PAX records
/// and long names; xattrs included). Guards memory against hostile archives.
pub(crate) const MAX_HEADER_BYTES: usize = 16 << 20;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Set when the caller's reader itself fails (as opposed to the data in it
/// being corrupt), so that the error is reported as I/O, not as bad input.
#[derive(Clone, Default)]
pub(crate) struct SourceFailed(Rc<RefCell<Option<(io::ErrorKind, String)>>>);

impl SourceFailed {
    /// The source's own error, if it failed.
    pub(crate) fn get(&self) -> Option<io::Error> {
        let failed = self.0.borrow();
        failed
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }
}

struct Source<'a> {
    inner: &'a mut dyn Read,
    failed: SourceFailed,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    *self.failed.0.borrow_mut() = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                Ok(n) => return Ok(n),
            }
        }
    }
}

/// The tar byte stream: decompressed if the first bytes show gzip or zstd.
pub(crate) fn open<'a>(
    input: &'a mut dyn Read,
    failed: &SourceFailed,
) -> Result<Box<dyn Read + 'a>> {
    let mut source = Source {
        inner: input,
        failed: failed.clone(),
    };
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match source.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::io("reading the archive", e)),
        }
    }
    let head = &magic[..got];
    let stream = Cursor::new(head.to_vec()).chain(source);
    Ok(if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(stream))
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(
            zstd::Decoder::new(stream)
                .map_err(|e| Error::BadInput(format!("cannot start zstd decoding: {e}")))?,
        )
    } else {
        Box::new(stream)
    })
}

/// What the [`Tap`] saw.
#[derive(Default)]
pub(crate) struct TapState {
    /// Bytes read so far (the position in the tar stream).
    pub(crate) pos: u64,
    /// Whether a read hit the end of the stream.
    pub(crate) eof: bool,
    /// Bytes read since [`TapState::record`], while recording.
    recording: Option<Vec<u8>>,
    /// Position where the recording started.
    pub(crate) record_start: u64,
}

impl TapState {
    /// Starts recording everything read from now on.
    pub(crate) fn record(&mut self) {
        self.recording = Some(Vec::new());
        self.record_start = self.pos;
    }

    /// Stops recording and returns what was read.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.recording.take().unwrap_or_default()
    }
}

/// A reader that counts, notes end of stream, and records on demand.
pub(crate) struct Tap<'a> {
    inner: Box<dyn Read + 'a>,
    state: Rc<RefCell<TapState>>,
}

impl<'a> Tap<'a> {
    /// Wraps `inner`; the state is shared with the caller.
    pub(crate) fn new(inner: Box<dyn Read + 'a>) -> (Self, Rc<RefCell<TapState>>) {
        let state = Rc::new(RefCell::new(TapState::default()));
        (
            Tap {
                inner,
                state: state.clone(),
            },
            state,
        )
    }
}

impl Read for Tap<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.borrow_mut();
        if n == 0 && !buf.is_empty() {
            st.eof = true;
        }
        st.pos += n as u64;
        if let Some(rec) = st.recording.as_mut() {
            if rec.len() + n > MAX_HEADER_BYTES {
                return Err(io::Error::other(format!(
                    "extended headers of one entry exceed {} MiB",
                    MAX_HEADER_BYTES >> 20
                )));
            }
            rec.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}
