//! Moving a body from one connection to the other as it arrives, reframed when the two sides
//! frame it differently, within the size and time limits; never held whole.

use super::*;
use crate::buffers::{Buffers, Lease};

/// How relayed body bytes are framed on the way out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reframe {
    /// As they are (a length-delimited or close-delimited body).
    Raw,
    /// In chunks (the body's own chunking is normalised, or added).
    Chunked,
}

pub(super) struct Relay {
    pub(super) framing: Framing,
    pub(super) reframe: Reframe,
    pub(super) read_timeout: Duration,
    pub(super) max: Option<u64>,
    pub(super) limits: Limits,
    /// Read no further than the body's end into a lent buffer: true for a client's request
    /// body, so a request pipelined behind it stays in the socket for the connection's own
    /// buffer. False for a response: bytes an upstream sends past the body must be seen, so
    /// that its connection is not pooled with them.
    pub(super) stop_at_end: bool,
}

pub(super) enum RelayError {
    Read,
    Write,
    Timeout,
    Truncated,
    TooLarge,
    Parse(crate::http::ParseError),
}

/// Streams one body from `src` (what is buffered first, then reads) to `dst`: at most one
/// buffer of it is in memory at a time.
/// `capture` collects the body for the cache while it stays within its limit, and is
/// dropped once it would not.
///
/// A body that does not fit the connection's own buffer, relayed as it is from a plain
/// connection, is read into a large buffer from `spare` ([`crate::buffers`]) once what was
/// buffered with the head has gone out (for a request body, never past its end), or from
/// the first read after a buffer comes back if all were lent; the connection gets its own
/// buffer back at the end, with any bytes read past the body.
pub(super) async fn relay(
    src: &mut Wire,
    dst: &mut Wire,
    chunk: &mut Vec<u8>,
    r: &Relay,
    capture: (&mut Option<Vec<u8>>, u64),
    spare: &Buffers,
) -> Result<u64, RelayError> {
    let mut lease = None;
    let result = relay_body(src, dst, chunk, r, capture, (spare, &mut lease)).await;
    if let Some(lease) = lease {
        lease.restore(src);
    }
    result
}

/// Whether the body `dec` decodes is worth a large buffer: more than the connection's own
/// buffer ([`Wire::CAPACITY`]) left of it, or a length unknown until the peer closes. A
/// chunked body is not: its chunks are copied into `chunk` on the way out, which would grow
/// to the buffer's size.
fn wants_large(dec: &BodyDecoder, r: &Relay, src: &Wire) -> bool {
    r.reframe == Reframe::Raw
        && !src.is_tls()
        && match dec {
            BodyDecoder::Length { remaining } => *remaining > Wire::CAPACITY as u64,
            BodyDecoder::Eof => true,
            BodyDecoder::Chunked(_) => false,
        }
}

async fn relay_body<'a>(
    src: &mut Wire,
    dst: &mut Wire,
    chunk: &mut Vec<u8>,
    r: &Relay,
    (capture, capture_max): (&mut Option<Vec<u8>>, u64),
    (spare, lease): (&'a Buffers, &mut Option<Lease<'a>>),
) -> Result<u64, RelayError> {
    let mut dec = BodyDecoder::new(r.framing, &r.limits);
    let mut total = 0u64;
    // A relay refused a large buffer asks again before each read: one that kept its own for
    // the whole body fell 16 times behind the relays that had one.
    let mut refused = false;
    while !dec.is_done() {
        if src.data().is_empty() {
            if lease.is_none() && wants_large(&dec, r, src) {
                *lease = spare.lend(src);
                if lease.is_none() && !refused {
                    refused = true;
                    spare.refused();
                }
            }
            // A client's pipelined request read into a lent buffer would move into the
            // connection's own buffer at the end, growing it (see `stop_at_end`).
            let most = match (&lease, &dec) {
                (Some(_), BodyDecoder::Length { remaining }) if r.stop_at_end => {
                    usize::try_from(*remaining).unwrap_or(usize::MAX)
                }
                _ => usize::MAX,
            };
            match monoio::time::timeout(r.read_timeout, src.fill_up_to(most)).await {
                Err(_) => return Err(RelayError::Timeout),
                Ok(Err(_)) => return Err(RelayError::Read),
                Ok(Ok(0)) if dec.complete_at_close() => break,
                Ok(Ok(0)) => return Err(RelayError::Truncated),
                Ok(Ok(_)) => {}
            }
        }
        let d = dec.decode(src.data()).map_err(RelayError::Parse)?;
        let len = d.data.len();
        if len > 0 {
            total += len as u64;
            if r.max.is_some_and(|max| total > max) {
                return Err(RelayError::TooLarge);
            }
            if total > capture_max {
                *capture = None;
            }
            if let Some(body) = capture.as_mut() {
                body.extend_from_slice(src.data().get(d.data.clone()).unwrap_or_default());
            }
            match r.reframe {
                Reframe::Raw => dst
                    .send_from(src, d.data.clone())
                    .await
                    .map_err(|_| RelayError::Write)?,
                Reframe::Chunked => {
                    chunk.clear();
                    encode::chunk_head(chunk, len);
                    chunk.extend_from_slice(src.data().get(d.data.clone()).unwrap_or_default());
                    chunk.extend_from_slice(encode::CHUNK_END);
                    let (res, buf) = dst.send(std::mem::take(chunk)).await;
                    *chunk = buf;
                    res.map_err(|_| RelayError::Write)?;
                }
            }
        }
        src.consume(d.consumed);
    }
    if r.reframe == Reframe::Chunked {
        dst.send_static(encode::LAST_CHUNK)
            .await
            .map_err(|_| RelayError::Write)?;
    }
    Ok(total)
}
