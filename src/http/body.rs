//! Message body framing (RFC 9112 §6–7): how long a body is, and an incremental decoder that
//! tells the proxy where each run of body bytes starts and ends in the bytes it has, so bodies
//! are forwarded as they arrive and never held whole.

use std::ops::Range;

use super::chars::is_tchar;
use super::error::ParseError;
use super::limits::Limits;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the peer closes (responses only).
    Eof,
}

/// One step of decoding: `consumed` bytes of the input are used up; `data` (within them) is
/// body content to forward; `done` says the body ended at `consumed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub consumed: usize,
    pub data: Range<usize>,
    pub done: bool,
}

/// Decodes one body, fed in arbitrary pieces.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    Eof,
}

impl BodyDecoder {
    pub fn new(framing: Framing, limits: &Limits) -> BodyDecoder {
        match framing {
            Framing::Length(n) => BodyDecoder::Length { remaining: n },
            Framing::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(limits)),
            Framing::Eof => BodyDecoder::Eof,
        }
    }

    /// Decodes from the start of `input`. Returns after at most one run of data, so the caller
    /// forwards it and calls again with the rest; stops at the end of the body, leaving any
    /// bytes after it (a pipelined request) unconsumed.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ParseError> {
        match self {
            BodyDecoder::Length { remaining } => {
                let n = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= n as u64;
                Ok(Decoded {
                    consumed: n,
                    data: 0..n,
                    done: *remaining == 0,
                })
            }
            BodyDecoder::Chunked(chunked) => chunked.decode(input),
            BodyDecoder::Eof => Ok(Decoded {
                consumed: input.len(),
                data: 0..input.len(),
                done: false,
            }),
        }
    }

    /// The body is complete (an `Eof` body completes only when the peer closes).
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(chunked) => chunked.is_done(),
            BodyDecoder::Eof => false,
        }
    }

    /// The peer closed: true if that ends the body properly, false if it was truncated.
    pub fn complete_at_close(&self) -> bool {
        matches!(self, BodyDecoder::Eof) || self.is_done()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size: only `;` may follow (BWS before an extension).
    SizeSpace {
        value: u64,
    },
    /// Inside a chunk extension, until CR.
    Extension {
        value: u64,
        len: usize,
    },
    /// CR of the size line seen.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    /// CR of a trailer line (`last`: of the final empty line) seen.
    TrailerLf {
        last: bool,
    },
    Done,
}

/// Incremental decoder for the chunked coding (RFC 9112 §7.1). Extensions are skipped and
/// bounded; trailers are checked, bounded and dropped (RFC 9110 §6.5.1 allows discarding
/// them).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
    max_ext: usize,
    max_trailers: usize,
}

impl ChunkedDecoder {
    pub fn new(limits: &Limits) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            trailer_bytes: 0,
            max_ext: limits.max_chunk_ext,
            max_trailers: limits.max_trailers,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ParseError> {
        let mut pos = 0;
        while self.state != State::Done {
            let Some(&b) = input.get(pos) else { break };
            if let State::Data { remaining } = self.state {
                let n = (input.len() - pos).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let left = remaining - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                return Ok(Decoded {
                    consumed: pos + n,
                    data: pos..pos + n,
                    done: false,
                });
            }
            pos += 1;
            self.state = self.step(b)?;
        }
        Ok(Decoded {
            consumed: pos,
            data: pos..pos,
            done: self.state == State::Done,
        })
    }

    /// One byte of framing (anything but chunk data).
    fn step(&mut self, b: u8) -> Result<State, ParseError> {
        use State::*;
        if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf { .. }
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > self.max_trailers {
                return Err(ParseError::InvalidTrailer);
            }
        }
        Ok(match (self.state, b) {
            (Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits == 16 {
                    return Err(ParseError::InvalidChunkSize);
                }
                let d = (b as char).to_digit(16).unwrap_or(0);
                Size {
                    value: value << 4 | u64::from(d),
                    digits: digits + 1,
                }
            }
            (Size { digits: 0, .. }, b'\n') => return Err(ParseError::BareLineEnding),
            (Size { digits: 0, .. }, _) => return Err(ParseError::InvalidChunkSize),
            (Size { value, .. } | SizeSpace { value }, b' ' | b'\t') => SizeSpace { value },
            (Size { value, .. } | SizeSpace { value }, b';') => Extension { value, len: 0 },
            (Size { value, .. }, b'\r') => SizeLf { value },
            (Size { .. } | SizeSpace { .. }, b'\n') => return Err(ParseError::BareLineEnding),
            (Size { .. } | SizeSpace { .. }, _) => return Err(ParseError::InvalidChunkSize),
            (Extension { value, .. }, b'\r') => SizeLf { value },
            (Extension { .. }, b'\n') => return Err(ParseError::BareLineEnding),
            (Extension { value, len }, _) => {
                if len >= self.max_ext || is_control(b) {
                    return Err(ParseError::InvalidChunkExtension);
                }
                Extension {
                    value,
                    len: len + 1,
                }
            }
            (SizeLf { value: 0 }, b'\n') => TrailerStart,
            (SizeLf { value }, b'\n') => Data { remaining: value },
            (SizeLf { .. }, _) => return Err(ParseError::BareLineEnding),
            (Data { remaining }, _) => Data { remaining },
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size {
                value: 0,
                digits: 0,
            },
            (DataCr | DataLf, _) => return Err(ParseError::InvalidChunkTerminator),
            (TrailerStart, b'\r') => TrailerLf { last: true },
            (TrailerStart | TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerStart | TrailerName, b'\n') => return Err(ParseError::BareLineEnding),
            (TrailerStart | TrailerName, _) => return Err(ParseError::InvalidTrailer),
            (TrailerValue, b'\r') => TrailerLf { last: false },
            (TrailerValue, b'\n') => return Err(ParseError::BareLineEnding),
            (TrailerValue, _) if is_control(b) => return Err(ParseError::InvalidTrailer),
            (TrailerValue, _) => TrailerValue,
            (TrailerLf { last: true }, b'\n') => Done,
            (TrailerLf { last: false }, b'\n') => TrailerStart,
            (TrailerLf { .. }, _) => return Err(ParseError::BareLineEnding),
            (Done, _) => Done,
        })
    }
}

/// Control bytes other than HTAB, and DEL: never allowed in extensions or field values.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}
