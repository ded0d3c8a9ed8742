//! Passing file descriptors over a Unix stream socket (`SCM_RIGHTS`).
//!
//! The descriptors ride on the first byte of the data sent with them; the
//! receiver picks them up with whatever `recvmsg` reads that byte.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

/// The most descriptors one message may carry.
pub const MAX_FDS: usize = 4;

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE((n * mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends all of `data` on `sock`, with `fds` attached to its first byte.
pub fn send(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte to ride on",
        ));
    }
    let mut sent = 0;
    while sent < data.len() {
        let attach = sent == 0 && !fds.is_empty();
        // u64 words keep the control buffer aligned for cmsghdr.
        let mut control = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: data[sent..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - sent,
        };
        // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if attach {
            let payload = fds.len() * mem::size_of::<RawFd>();
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = cmsg_space(fds.len()) as _;
            // SAFETY: the control buffer is large enough for one cmsghdr with
            // `fds.len()` descriptors (CMSG_SPACE), and aligned (u64 words).
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
                let dst = libc::CMSG_DATA(cmsg) as *mut RawFd;
                for (i, fd) in fds.iter().enumerate() {
                    ptr::write_unaligned(dst.add(i), fd.as_raw_fd());
                }
            }
        }
        // SAFETY: msg points at valid buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes from `sock`; descriptors that came
/// with them are appended to `fds` (close-on-exec). Returns the byte count
/// (0 at end of stream).
pub fn recv(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut control = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: plain data; the pointers set below outlive the recvmsg call.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = (control.len() * 8) as _;
        // SAFETY: msg describes valid, writable buffers.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut got = Vec::new();
        // SAFETY: the kernel filled msg_control with well-formed cmsghdrs
        // within msg_controllen; CMSG_NXTHDR stops at its end.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / mem::size_of::<RawFd>() {
                        got.push(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            // `got` is dropped, closing whatever did arrive.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more descriptors were sent than one message may carry",
            ));
        }
        fds.extend(got);
        return Ok(n as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn passes_a_file_descriptor() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello through the socket").unwrap();
        f.rewind().unwrap();
        send(&a, b"x1234", &[f.as_fd()]).unwrap();
        drop(f);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let mut n = 0;
        while n < 5 {
            n += recv(&b, &mut buf[n..5], &mut fds).unwrap();
        }
        assert_eq!(&buf[..5], b"x1234");
        assert_eq!(fds.len(), 1);
        let mut g = File::from(fds.pop().unwrap());
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello through the socket");
    }

    #[test]
    fn passes_several_and_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p1, p2) = UnixStream::pair().unwrap();
        send(&a, b"ab", &[p1.as_fd(), p2.as_fd()]).unwrap();
        send(&a, b"cd", &[]).unwrap();
        drop(a);
        let mut fds = Vec::new();
        let mut all = Vec::new();
        let mut buf = [0u8; 8];
        loop {
            let n = recv(&b, &mut buf, &mut fds).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, b"abcd");
        assert_eq!(fds.len(), 2);
        // The received descriptors are live sockets: a byte written on one arrives on the other.
        let s1 = UnixStream::from(fds.remove(0));
        let mut s2 = UnixStream::from(fds.remove(0));
        (&s1).write_all(b"z").unwrap();
        let mut z = [0u8; 1];
        s2.read_exact(&mut z).unwrap();
        assert_eq!(&z, b"z");
    }

    #[test]
    fn refuses_too_many_and_empty() {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        let many: Vec<_> = (0..MAX_FDS + 1).map(|_| f.as_fd()).collect();
        assert!(send(&a, b"x", &many).is_err());
        assert!(send(&a, b"", &[f.as_fd()]).is_err());
    }
}
