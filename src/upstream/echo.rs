//! The built-in `echo` upstream: answers in-process with the request it received (line,
//! headers, body size) as JSON, so the embedded default config works with nothing else
//! installed. It sees the request exactly as the gateway would forward it.

use crate::http::RequestHead;

/// The JSON document describing `head` (parsed from `buf`) and a body of `body_bytes`.
pub fn render(buf: &[u8], head: &RequestHead, body_bytes: u64) -> Vec<u8> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers: Vec<[String; 2]> = head
        .fields
        .headers
        .iter()
        .map(|h| [text(h.name.of(buf)), text(h.value.of(buf))])
        .collect();
    let doc = serde_json::json!({
        "method": text(head.method_span.of(buf)),
        "target": text(head.target.of(buf)),
        "version": match head.version {
            crate::http::Version::Http10 => "HTTP/1.0",
            crate::http::Version::Http11 => "HTTP/1.1",
        },
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}
