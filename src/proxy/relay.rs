//! Moving a body from one connection to the other as it arrives, reframed when the two sides
//! frame it differently, within the size and time limits; never held whole.

use super::*;

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
pub(super) async fn relay(
    src: &mut Wire,
    dst: &mut Wire,
    chunk: &mut Vec<u8>,
    r: &Relay,
    (capture, capture_max): (&mut Option<Vec<u8>>, u64),
) -> Result<u64, RelayError> {
    let mut dec = BodyDecoder::new(r.framing, &r.limits);
    let mut total = 0u64;
    while !dec.is_done() {
        if src.data().is_empty() {
            match monoio::time::timeout(r.read_timeout, src.fill()).await {
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
