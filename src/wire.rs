//! A TCP stream with its receive buffer: the few operations the proxy performs on either side
//! of a connection (fill, look, consume, send, relay a range to another stream). Buffers are
//! owned and handed to the kernel by value, as io_uring requires; nothing here parses.

use std::io;
use std::ops::Range;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

pub struct Wire {
    stream: TcpStream,
    /// Received bytes not yet consumed are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// Bytes read and written since [`Wire::take_counts`] (for the byte counters).
    received: u64,
    sent: u64,
}

impl Wire {
    pub fn new(stream: TcpStream, capacity: usize) -> Wire {
        Wire {
            stream,
            buf: Vec::with_capacity(capacity),
            start: 0,
            received: 0,
            sent: 0,
        }
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
        self.compact();
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve(4096);
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        if let Ok(n) = res {
            self.received += n as u64;
        }
        res
    }

    /// Writes all of `data`, handing the buffer back for reuse.
    pub async fn send(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, data) = self.stream.write_all(data).await;
        self.sent += res.as_ref().map_or(0, |&n| n as u64);
        (res.map(drop), data)
    }

    /// Writes shared bytes (a cached body) without copying them.
    pub async fn send_bytes(&mut self, data: bytes::Bytes) -> io::Result<()> {
        let n = self.stream.write_all(data).await.0?;
        self.sent += n as u64;
        Ok(())
    }

    pub async fn send_static(&mut self, data: &'static [u8]) -> io::Result<()> {
        let n = self.stream.write_all(data).await.0?;
        self.sent += n as u64;
        Ok(())
    }

    /// Writes `range` of `src`'s unconsumed bytes to this stream without copying them.
    pub async fn send_from(&mut self, src: &mut Wire, range: Range<usize>) -> io::Result<()> {
        let buf = std::mem::take(&mut src.buf);
        let (from, to) = (src.start + range.start, src.start + range.end);
        let (res, slice) = self.stream.write_all(buf.slice(from..to)).await;
        src.buf = slice.into_inner();
        self.sent += res.as_ref().map_or(0, |&n| n as u64);
        res.map(drop)
    }

    /// The stream and the bytes received but not consumed, for a tunnel.
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        self.compact();
        (self.stream, self.buf)
    }
}
