//! What a response is stored under, as byte streams that are hashed, stored and compared by
//! one function each, so the three can never disagree and a lookup allocates nothing:
//!
//! - the URL: lowercased host (port kept), a space (in no host or path), then the path and
//!   query with a leading `/` (an absolute-form `http://h?q` is `/?q`, RFC 9110 §4.2.3);
//! - a variant: for each field name the URL's Vary lists, the request's values of that field
//!   joined by `,` (RFC 9111 §4.1 compares the combined field values), or `0x01` when the
//!   request has none, each followed by `0x00`. Neither byte can occur in a parsed value.

use std::hash::{BuildHasher, Hasher};

use crate::http::parse::Fields;

/// Receives a key's bytes in pieces.
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes the URL stream for `host` and `path` (see the module doc).
pub(super) fn url_stream(host: &[u8], path: &[u8], sink: &mut impl Sink) {
    let mut lower = [0u8; 32];
    for chunk in host.chunks(lower.len()) {
        if let Some(out) = lower.get_mut(..chunk.len()) {
            out.copy_from_slice(chunk);
            out.make_ascii_lowercase();
            sink.put(out);
        }
    }
    sink.put(b" ");
    if !path.starts_with(b"/") {
        sink.put(b"/");
    }
    sink.put(path);
}

const ABSENT: &[u8] = b"\x01";
const END: &[u8] = b"\x00";

/// Writes the variant stream: the request's values of each field named in `vary` (lowercased
/// names, comma-separated, as [`super::policy::vary_names`] makes them).
pub(super) fn vary_stream(vary: &[u8], buf: &[u8], fields: &Fields, sink: &mut impl Sink) {
    for name in vary.split(|&b| b == b',').filter(|n| !n.is_empty()) {
        let mut present = false;
        for h in &fields.headers {
            if h.name.of(buf).eq_ignore_ascii_case(name) {
                if present {
                    sink.put(b",");
                }
                sink.put(h.value.of(buf));
                present = true;
            }
        }
        if !present {
            sink.put(ABSENT);
        }
        sink.put(END);
    }
}

/// Whether `write` produces exactly `stored`, compared piece by piece as it goes.
pub(super) fn same(stored: &[u8], write: impl FnOnce(&mut Compare<'_>)) -> bool {
    let mut c = Compare {
        rest: stored,
        equal: true,
    };
    write(&mut c);
    c.equal && c.rest.is_empty()
}

pub(super) struct Compare<'a> {
    rest: &'a [u8],
    equal: bool,
}

impl Sink for Compare<'_> {
    fn put(&mut self, bytes: &[u8]) {
        match self.rest.strip_prefix(bytes) {
            Some(rest) if self.equal => self.rest = rest,
            _ => self.equal = false,
        }
    }
}

/// Keyed hashing of the streams: the seed is random per shard, so a client cannot aim
/// requests at one hash bucket or forge a collision.
#[derive(Debug, Default)]
pub(super) struct Hashing {
    state: ahash::RandomState,
}

impl Hashing {
    pub fn url(&self, host: &[u8], path: &[u8]) -> u64 {
        let mut feed = self.feed();
        url_stream(host, path, &mut feed);
        feed.finish()
    }

    pub fn variant(&self, vary: &[u8], buf: &[u8], fields: &Fields) -> u64 {
        let mut feed = self.feed();
        vary_stream(vary, buf, fields, &mut feed);
        feed.finish()
    }

    fn feed(&self) -> Feed {
        Feed {
            hasher: self.state.build_hasher(),
            block: [0; 32],
            len: 0,
        }
    }
}

/// Hashes a stream in fixed 32-byte blocks, so the hash depends on the bytes alone and not on
/// how the writer cut them into pieces.
struct Feed {
    hasher: ahash::AHasher,
    block: [u8; 32],
    len: usize,
}

impl Sink for Feed {
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some(room) = self.block.get_mut(self.len..) else {
                return;
            };
            let n = room.len().min(bytes.len());
            let (now, later) = bytes.split_at(n);
            if let Some(dst) = room.get_mut(..n) {
                dst.copy_from_slice(now);
            }
            self.len += n;
            bytes = later;
            if self.len == self.block.len() {
                self.hasher.write(&self.block);
                self.len = 0;
            }
        }
    }
}

impl Feed {
    fn finish(mut self) -> u64 {
        if let Some(tail) = self.block.get(..self.len) {
            self.hasher.write(tail);
        }
        self.hasher.finish()
    }
}
