//! A framed connection over a Unix socket: [`crate::protocol`] frames,
//! with descriptors passed alongside (see [`crate::fdpass`]).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Serialize};

use crate::fdpass;
use crate::protocol::{self, FrameError};

/// The receiving half: reads frames and collects the descriptors that came with them.
pub struct Channel {
    sock: UnixStream,
    fds: VecDeque<OwnedFd>,
}

struct FdReader<'a> {
    sock: &'a UnixStream,
    fds: &'a mut VecDeque<OwnedFd>,
}

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = Vec::new();
        let n = fdpass::recv(self.sock, buf, &mut got)?;
        self.fds.extend(got);
        Ok(n)
    }
}

impl Channel {
    /// Wraps a connected socket.
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            sock,
            fds: VecDeque::new(),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Reads the next message and the descriptors received with it.
    /// `Ok(None)` at a clean end of stream.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>, FrameError> {
        // Descriptors left from an earlier frame belong to nobody: close them.
        self.fds.clear();
        let msg = protocol::read_frame(&mut FdReader {
            sock: &self.sock,
            fds: &mut self.fds,
        })?;
        Ok(msg.map(|m| (m, self.fds.drain(..).collect())))
    }

    /// A sender writing to the same socket.
    pub fn sender(&self) -> io::Result<Sender> {
        Ok(Sender {
            sock: Mutex::new(self.sock.try_clone()?),
        })
    }
}

/// The sending half; whole frames are written under a lock, so threads may share it.
pub struct Sender {
    sock: Mutex<UnixStream>,
}

impl Sender {
    /// Sends one message, with `fds` attached.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), FrameError> {
        let bytes = protocol::encode_frame(msg)?;
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        fdpass::send(&sock, &bytes, fds)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, WireSource};
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn request_with_a_descriptor() {
        let (a, b) = UnixStream::pair().unwrap();
        let tx = Channel::new(a).sender().unwrap();
        let mut rx = Channel::new(b);
        let (p, mut q) = UnixStream::pair().unwrap();
        let req = Request::ImportImage {
            name: "n".into(),
            parent: None,
            source: WireSource::Fd,
        };
        tx.send(&req, &[p.as_fd()]).unwrap();
        tx.send(&Request::ListImages, &[]).unwrap();
        drop(tx);
        let (got, fds) = rx.recv::<Request>().unwrap().unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 1);
        let mut passed = UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"!").unwrap();
        let mut one = [0u8; 1];
        q.read_exact(&mut one).unwrap();
        let (got, fds) = rx.recv::<Request>().unwrap().unwrap();
        assert_eq!(got, Request::ListImages);
        assert!(fds.is_empty());
        assert!(rx.recv::<Request>().unwrap().is_none());
    }
}
