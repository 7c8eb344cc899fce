//! Chunked bodies and response heads: decoding must not depend on how the bytes were split
//! across reads, and nothing may panic.
#![no_main]

use ringgate::http::{BodyDecoder, Framing, Limits, Method, ResponseHead};

/// Decodes `input` fed in pieces of `step` bytes: the body bytes, and how it ended.
fn decode(
    input: &[u8],
    step: usize,
) -> (Vec<u8>, Result<Option<usize>, ringgate::http::ParseError>) {
    let mut dec = BodyDecoder::new(Framing::Chunked, &Limits::DEFAULT);
    let mut data = Vec::new();
    let mut offset = 0;
    let mut pending: &[u8] = &[];
    let mut pieces = input.chunks(step);
    loop {
        if pending.is_empty() {
            match pieces.next() {
                Some(p) => pending = p,
                None => return (data, Ok(None)),
            }
        }
        match dec.decode(pending) {
            Err(e) => return (data, Err(e)),
            Ok(d) => {
                data.extend_from_slice(&pending[d.data.clone()]);
                offset += d.consumed;
                pending = &pending[d.consumed..];
                if d.done {
                    return (data, Ok(Some(offset)));
                }
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let whole = decode(body, body.len().max(1));
    let pieces = decode(body, usize::from(split).max(1));
    assert_eq!(whole, pieces, "split at {split}");

    let mut head = ResponseHead::new(&Limits::DEFAULT);
    if head.parse(body, &Limits::DEFAULT).is_ok() {
        let _ = head.framing(Method::Get);
    }
});
