//! A TCP stream with its receive buffer: the few operations the proxy performs on either side
//! of a connection (fill, look, consume, send, relay a range to another stream). Buffers are
//! owned and handed to the kernel by value, as io_uring requires; nothing here parses.
//!
//! A client connection accepted on a TLS listener, or a connection to an upstream with `tls`,
//! carries its [`Session`]: `fill` then puts
//! decrypted bytes in the receive buffer and the sends encrypt, so the pipeline sees plaintext
//! either way. The plain path pays one test of an `Option` per call.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::tls::session::Session;

pub struct Wire {
    stream: TcpStream,
    /// Received bytes not yet consumed are `buf[start..]` (plaintext on a TLS connection).
    buf: Vec<u8>,
    start: usize,
    /// Bytes read and written since [`Wire::take_counts`] (for the byte counters); on a TLS
    /// connection, the HTTP bytes (plaintext), as for a plain one.
    received: u64,
    sent: u64,
    /// Boxed: the rustls state is large, and plain connections should not carry its size.
    tls: Option<Box<Session>>,
    /// Whether a plain send first tries `send(2)` from the task (see [`Wire::send_plain`]).
    direct_sends: bool,
}

impl Wire {
    /// The capacity of a connection's own receive buffer: a head up to the usual sizes, and a
    /// body read in pieces of this size unless a relay borrows a larger buffer
    /// ([`crate::buffers`]).
    pub const CAPACITY: usize = 16 * 1024;

    /// `direct_sends`: on the epoll driver, where it saves monoio's op bookkeeping per send;
    /// on io_uring it costs more than it saves (see [`Wire::send_plain`]).
    pub fn new(stream: TcpStream, capacity: usize, direct_sends: bool) -> Wire {
        Wire::with_buffer(stream, Vec::with_capacity(capacity), direct_sends)
    }

    /// As [`Wire::new`], receiving into `buf` (empty), which [`Wire::into_buffer`] gives back.
    pub fn with_buffer(stream: TcpStream, buf: Vec<u8>, direct_sends: bool) -> Wire {
        debug_assert!(buf.is_empty());
        Wire {
            direct_sends,
            stream,
            buf,
            start: 0,
            received: 0,
            sent: 0,
            tls: None,
        }
    }

    /// A client connection on a TLS listener, or a connection to a TLS upstream: shakes
    /// hands, then reads and writes plaintext through `session`.
    pub fn with_tls(stream: TcpStream, capacity: usize, session: Session) -> Wire {
        Wire {
            tls: Some(Box::new(session)),
            ..Wire::new(stream, capacity, false)
        }
    }

    /// Whether the bytes travel encrypted (the client's X-Forwarded-Proto is then `https`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs the TLS handshake (a plain wire has none); on failure, the reason's label.
    pub async fn handshake(&mut self) -> Result<(), crate::tls::session::Failure> {
        match &mut self.tls {
            Some(tls) => tls.handshake(&mut self.stream).await,
            None => Ok(()),
        }
    }

    /// Whether the TLS handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.resumed())
    }

    /// Makes the plain sends from now on try `send(2)` from the task first, as on epoll: for
    /// the last answer on a connection, so that [`Wire::fin`] follows its bytes at once
    /// rather than a driver round later.
    pub fn last_answer(&mut self) {
        self.direct_sends = true;
    }

    /// Says goodbye on a TLS connection (close_notify), waiting at most `patience` for the
    /// client to take it; a plain connection just closes when dropped.
    pub async fn close(&mut self, patience: std::time::Duration) {
        if let Some(tls) = &mut self.tls {
            let _ = monoio::time::timeout(patience, tls.close(&mut self.stream)).await;
        }
    }

    /// Sends our FIN now, ahead of the close that dropping the stream does: on io_uring that
    /// close is an operation submitted with the worker's next batch, and a client that
    /// closes as soon as it has read the answer gets there first. The TIME_WAIT is then the
    /// client's, whose next connect has to find a port among them (docs/performance.md,
    /// twelfth pass). nginx, and ringgate on epoll, close first.
    pub fn fin(&self) {
        // SAFETY: the stream owns this descriptor; shutdown(2) does not close it.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
    }

    /// Bytes received and sent since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        let counts = (self.received, self.sent);
        (self.received, self.sent) = (0, 0);
        counts
    }

    /// The bytes received and not yet consumed.
    pub fn data(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Closes the connection (as dropping it does) and returns its receive buffer, emptied.
    pub fn into_buffer(self) -> Vec<u8> {
        let mut buf = self.buf;
        buf.clear();
        buf
    }

    /// Puts `other` in place of the receive buffer, the unconsumed bytes moved into it, and
    /// returns the buffer it replaces, emptied: a relay reads a large body into a larger
    /// buffer lent for it ([`crate::buffers`]).
    pub fn swap_buffer(&mut self, mut other: Vec<u8>) -> Vec<u8> {
        other.clear();
        other.extend_from_slice(self.data());
        let mut old = std::mem::replace(&mut self.buf, other);
        self.start = 0;
        old.clear();
        old
    }

    /// Lets the buffer hold at least `total` unconsumed bytes (a head up to `max_head`).
    pub fn reserve(&mut self, total: usize) {
        if self.buf.capacity() - self.start < total {
            self.compact();
            self.buf.reserve(total - self.buf.len());
        }
    }

    /// Whether the buffer is full of unconsumed bytes.
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.buf.len() == self.buf.capacity()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Reads more bytes after the unconsumed ones; `Ok(0)` is the peer closing.
    ///
    /// The buffer is lent to the kernel for the read: cancelling this future (a timeout)
    /// drops the buffered bytes with it, so a caller that cancels must give up the wire.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.fill_up_to(usize::MAX).await
    }

    /// As [`Wire::fill`], taking at most `max` bytes from a plain stream (a TLS stream takes
    /// what its records hold): a relay reading the rest of a body into a lent buffer leaves
    /// what follows the body in the socket, for the connection's own buffer.
    pub async fn fill_up_to(&mut self, max: usize) -> io::Result<usize> {
        self.compact();
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve(4096);
        }
        let res = match &mut self.tls {
            Some(tls) => tls.read(&mut self.stream, &mut self.buf).await,
            None => {
                let buf = std::mem::take(&mut self.buf);
                let len = buf.len();
                let end = buf.capacity().min(len.saturating_add(max.max(1)));
                let (res, slice) = self.stream.read(buf.slice_mut(len..end)).await;
                self.buf = slice.into_inner();
                res
            }
        };
        if let Ok(n) = res {
            self.received += n as u64;
        }
        res
    }

    /// Writes all of `data`, handing the buffer back for reuse.
    pub async fn send(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Some(tls) = &mut self.tls {
            let res = tls.write(&mut self.stream, &data).await;
            self.sent += if res.is_ok() { data.len() as u64 } else { 0 };
            return (res, data);
        }
        self.send_plain(data).await
    }

    /// Writes shared bytes (a cached body) without copying them.
    pub async fn send_bytes(&mut self, data: bytes::Bytes) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            tls.write(&mut self.stream, &data).await?;
            self.sent += data.len() as u64;
            return Ok(());
        }
        self.send_plain(data).await.0
    }

    pub async fn send_static(&mut self, data: &'static [u8]) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            tls.write(&mut self.stream, data).await?;
            self.sent += data.len() as u64;
            return Ok(());
        }
        self.send_plain(data).await.0
    }

    /// Writes `range` of `src`'s unconsumed bytes to this stream without copying them (on a
    /// TLS stream, encrypting straight from `src`'s buffer).
    pub async fn send_from(&mut self, src: &mut Wire, range: Range<usize>) -> io::Result<()> {
        let (from, to) = (src.start + range.start, src.start + range.end);
        if let Some(tls) = &mut self.tls {
            let data = src.buf.get(from..to).unwrap_or_default();
            tls.write(&mut self.stream, data).await?;
            self.sent += data.len() as u64;
            return Ok(());
        }
        let buf = std::mem::take(&mut src.buf);
        let (res, slice) = self.send_plain(buf.slice(from..to)).await;
        src.buf = slice.into_inner();
        res
    }

    /// Writes all of `buf` on a plain stream. With `direct_sends`, first one non-blocking
    /// `send(2)` from this task, which takes a whole head or small body nearly always, and
    /// only what it leaves goes through the driver. On epoll that skips monoio's op (its
    /// slab, the readiness check, the waker) for the same system call: 9,521 → 8,993
    /// instructions per proxied GET (callgrind). On io_uring it is a loss: one
    /// `io_uring_enter` carries the operations of one or more requests, and two more system
    /// calls per request cost more user and system time than the wake-ups they save
    /// (docs/performance.md, fourth pass). With every send awaited, nothing else is in flight
    /// on the socket, so the bytes stay in order.
    async fn send_plain<B: IoBuf + 'static>(&mut self, buf: B) -> (io::Result<()>, B) {
        if !self.direct_sends {
            // The buffer goes to the op as it is: wrapping it in a slice here costs the
            // io_uring path instructions it gains nothing for.
            let (res, buf) = self.stream.write_all(buf).await;
            self.sent += res.as_ref().map_or(0, |&n| n as u64);
            return (res.map(drop), buf);
        }
        let now = match self.send_now(&buf) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        self.sent += now as u64;
        if now >= buf.bytes_init() {
            return (Ok(()), buf);
        }
        let (res, rest) = self.stream.write_all(buf.slice(now..)).await;
        self.sent += res.as_ref().map_or(0, |&n| n as u64);
        (res.map(drop), rest.into_inner())
    }

    /// One non-blocking `send(2)` of `buf`'s bytes: how many the socket took, 0 when its
    /// buffer is full.
    fn send_now(&self, buf: &impl IoBuf) -> io::Result<usize> {
        // SAFETY: an IoBuf's read_ptr is valid for bytes_init bytes while `buf` lives, and
        // send(2) only reads them.
        let n = unsafe {
            libc::send(
                self.stream.as_raw_fd(),
                buf.read_ptr().cast(),
                buf.bytes_init(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => match io::Error::last_os_error() {
                e if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
                {
                    Ok(0)
                }
                e => Err(e),
            },
        }
    }

    /// The stream, the bytes received but not consumed, and the TLS session if there is one,
    /// for a tunnel.
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>, Option<Box<Session>>) {
        self.compact();
        (self.stream, self.buf, self.tls)
    }
}
