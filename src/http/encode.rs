//! Writing heads into reusable buffers: the request head that goes upstream (hop-by-hop fields
//! removed, forwarding fields added), response heads forwarded to the client with the framing
//! the proxy chose, responses the gateway makes itself, and chunk framing. Appends only: the
//! caller owns and reuses the `Vec`, so nothing allocates once it has grown to size.

use super::parse::{list_tokens, Fields, Header, HeaderKind, RequestHead, ResponseHead, Version};

/// What the proxy decided about the request it forwards.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    /// Origin-form target to send (after any prefix strip); `/` is sent if empty.
    pub path: &'a [u8],
    /// Host to send upstream (the client's, or the route's rewrite).
    pub host: &'a [u8],
    /// The client's address in text form, appended to X-Forwarded-For.
    pub client_addr: &'a [u8],
    /// `http` or `https`, sent as X-Forwarded-Proto.
    pub proto: &'a [u8],
    /// The request is a protocol upgrade the proxy will tunnel: keep Upgrade.
    pub tunnel: bool,
    /// Complete field lines (`Name: value\r\n`) the gateway adds, such as a generated
    /// X-Request-Id.
    pub extra: &'a [u8],
    /// End-to-end fields of the client's to leave out, by name (a route's header edits).
    pub omit: Option<&'a Omit<'a>>,
}

/// Which fields to leave out of a forwarded head, by name.
pub type Omit<'a> = dyn Fn(&[u8]) -> bool + 'a;

/// Writes the request head to send upstream. Always HTTP/1.1, origin-form, one Host first.
/// Drops hop-by-hop fields, Expect (the gateway answers 100-continue itself) and the client's
/// X-Forwarded-Proto/-Host; appends the client to X-Forwarded-For and us to Via.
pub fn request_head(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, fwd: &Forward<'_>) {
    out.extend_from_slice(head.method_span.of(buf));
    out.push(b' ');
    if !fwd.path.starts_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(fwd.path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(fwd.host);
    out.extend_from_slice(b"\r\n");
    kept_lines(out, buf, &head.fields.headers, head.len, |h| {
        let end_to_end = match h.kind {
            HeaderKind::Other => true,
            HeaderKind::Upgrade => fwd.tunnel,
            _ => false,
        };
        end_to_end && fwd.omit.is_none_or(|omit| !omit(h.name.of(buf)))
    });
    if head.fields.transfer_encoding.present {
        transfer_encoding(out, buf, &head.fields);
    }
    if let Some(n) = head.fields.content_length {
        content_length(out, n);
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    joined(out, buf, head, HeaderKind::XForwardedFor, fwd.client_addr);
    out.extend_from_slice(b"X-Forwarded-Proto: ");
    out.extend_from_slice(fwd.proto);
    out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
    out.extend_from_slice(head.host(buf));
    out.extend_from_slice(b"\r\nVia: ");
    let via = match head.version {
        Version::Http10 => b"1.0 ringgate" as &[u8],
        Version::Http11 => b"1.1 ringgate",
    };
    joined(out, buf, head, HeaderKind::Via, via);
    out.extend_from_slice(fwd.extra);
    if fwd.tunnel {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The values of every `kind` field of `head`, then `last`, comma-separated, and CRLF.
fn joined(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, kind: HeaderKind, last: &[u8]) {
    for h in head.fields.headers.iter().filter(|h| h.kind == kind) {
        out.extend_from_slice(h.value.of(buf));
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(last);
    out.extend_from_slice(b"\r\n");
}

/// How the proxy sends a response body to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOut {
    /// No body follows (HEAD, 1xx, 204, 304): Content-Length is passed on as the upstream
    /// sent it, since it describes the representation.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked (the upstream's own Transfer-Encoding, or added to keep the client connection
    /// when the upstream reads to close).
    Chunked,
    /// Until the connection closes (HTTP/1.0 client of a chunked or close-delimited body).
    UntilClose,
}

/// What the proxy decided about the response it forwards.
#[derive(Clone, Copy)]
pub struct Reply<'a> {
    pub body: BodyOut,
    /// The client connection stays open after this response.
    pub keep_alive: bool,
    /// The client spoke HTTP/1.0 (keep-alive must then be explicit).
    pub client_version: Version,
    /// A 101 that starts a tunnel: keep Upgrade and say `Connection: upgrade`.
    pub tunnel: bool,
    /// Whole field lines (`Name: value\r\n`) the gateway adds, e.g. RateLimit-*.
    pub extra: &'a [u8],
    /// End-to-end fields of the upstream's to leave out, by name (a route's header edits).
    pub omit: Option<&'a Omit<'a>>,
}

/// Writes the response head to send to the client: the upstream's status, reason and
/// end-to-end fields, with the framing and connection fields of `reply`.
pub fn response_head(out: &mut Vec<u8>, buf: &[u8], head: &ResponseHead, reply: &Reply<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    status_code(out, head.status);
    out.push(b' ');
    out.extend_from_slice(head.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let te = head.fields.transfer_encoding;
    // The upstream's codings travel with the body, except the chunking a close-delimited
    // reply has undone; a body we chunk ourselves gets `chunked` added.
    let pass_te = te.present
        && match reply.body {
            BodyOut::Chunked => true,
            BodyOut::UntilClose => !te.is_chunked(),
            BodyOut::None | BodyOut::Length(_) => false,
        };
    kept_lines(out, buf, &head.fields.headers, head.len, |h| {
        let passed = match h.kind {
            HeaderKind::ContentLength => reply.body == BodyOut::None,
            HeaderKind::TransferEncoding => false,
            HeaderKind::Upgrade => reply.tunnel,
            kind => !kind.is_hop_by_hop(),
        };
        passed && reply.omit.is_none_or(|omit| !omit(h.name.of(buf)))
    });
    if pass_te {
        transfer_encoding(out, buf, &head.fields);
    }
    match reply.body {
        BodyOut::Length(n) => content_length(out, n),
        BodyOut::Chunked if !te.is_chunked() => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        _ => {}
    }
    out.extend_from_slice(reply.extra);
    connection(out, reply.keep_alive, reply.client_version, reply.tunnel);
    out.extend_from_slice(b"\r\n");
}

/// A response served from the cache: `head` is a status line and end-to-end fields as the
/// cache stored them (or, for a 304, fields after a status line the caller wrote); then Age,
/// `X-Cache: HIT`, the gateway's `extra` lines, the length (none for a 304) and the
/// connection fields.
pub fn cached(
    out: &mut Vec<u8>,
    head: &[u8],
    age: u64,
    body_len: Option<u64>,
    extra: &[u8],
    keep_alive: bool,
    client_version: Version,
) {
    out.extend_from_slice(head);
    out.extend_from_slice(b"Age: ");
    decimal(out, age);
    out.extend_from_slice(b"\r\nX-Cache: HIT\r\n");
    out.extend_from_slice(extra);
    if let Some(n) = body_len {
        content_length(out, n);
    }
    connection(out, keep_alive, client_version, false);
    out.extend_from_slice(b"\r\n");
}

/// A response the gateway makes itself (errors, direct routes). `extra` holds whole field
/// lines (`Name: value\r\n`), written as given; `head_only` leaves out the body but keeps its
/// length (a HEAD request).
pub struct Generated<'a> {
    pub status: u16,
    pub content_type: &'a [u8],
    pub body: &'a [u8],
    pub extra: &'a [u8],
    pub keep_alive: bool,
    pub client_version: Version,
    pub head_only: bool,
    /// The status line and fields through Content-Length, made in advance by [`fields`] from
    /// these same values (a configured direct answer): one copy instead of a dozen pieces.
    pub ready: Option<&'a [u8]>,
}

pub fn generated(out: &mut Vec<u8>, g: &Generated<'_>) {
    generated_head(out, g, g.body.len());
    if !g.head_only {
        out.extend_from_slice(g.body);
    }
}

/// The short error response for `status`, closing the connection unless `keep_alive`.
pub fn error(out: &mut Vec<u8>, status: u16, keep_alive: bool) {
    let text = reason(status).as_bytes();
    let g = Generated {
        status,
        content_type: b"text/plain",
        body: text,
        extra: b"",
        keep_alive,
        client_version: Version::Http11,
        head_only: false,
        ready: None,
    };
    // The body `error_body` writes: "NNN " + reason + "\n".
    generated_head(out, &g, text.len() + 5);
    error_body(out, status);
}

/// The body of a generated error: `"404 Not Found\n"`.
pub fn error_body(out: &mut Vec<u8>, status: u16) {
    status_code(out, status);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.push(b'\n');
}

fn generated_head(out: &mut Vec<u8>, g: &Generated<'_>, body_len: usize) {
    match g.ready {
        Some(made) => out.extend_from_slice(made),
        None => fields(out, g, body_len),
    }
    connection(out, g.keep_alive, g.client_version, false);
    out.extend_from_slice(b"\r\n");
}

/// The status line and fields of a generated response up to its length: everything that
/// does not depend on the request (its connection fields come after).
pub fn fields(out: &mut Vec<u8>, g: &Generated<'_>, body_len: usize) {
    out.extend_from_slice(b"HTTP/1.1 ");
    status_code(out, g.status);
    out.push(b' ');
    out.extend_from_slice(reason(g.status).as_bytes());
    out.extend_from_slice(b"\r\nServer: ringgate\r\n");
    out.extend_from_slice(g.extra);
    if body_len > 0 && !g.content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(g.content_type);
        out.extend_from_slice(b"\r\n");
    }
    // A 204 (a CORS preflight answer) has no body and may not announce one (RFC 9110 §8.6).
    if g.status != 204 {
        content_length(out, body_len as u64);
    }
}

/// The head of a chunk of `len` bytes; the chunk's data and [`CHUNK_END`] follow.
pub fn chunk_head(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk with an empty trailer section: ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The interim response a client that sent `Expect: 100-continue` waits for.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Copies the field lines of `headers` that `keep` accepts, as received, a run of adjacent
/// kept lines in one copy (a head's fields are mostly kept, and a copy per line part was a
/// tenth of the proxy's user time). The parser guarantees the lines are contiguous, each ends
/// in CRLF (no bare LF, no folding), and the field section ends with the head's final CRLF
/// at `head_len`.
fn kept_lines(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[Header],
    head_len: usize,
    keep: impl Fn(&Header) -> bool,
) {
    let mut run: Option<(usize, usize)> = None;
    for (i, h) in headers.iter().enumerate() {
        if !keep(h) {
            continue;
        }
        let start = h.name.start as usize;
        let end = headers
            .get(i + 1)
            .map_or(head_len.saturating_sub(2), |next| next.name.start as usize);
        run = match run {
            Some((from, to)) if to == start => Some((from, end)),
            Some((from, to)) => {
                out.extend_from_slice(buf.get(from..to).unwrap_or_default());
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((from, to)) = run {
        out.extend_from_slice(buf.get(from..to).unwrap_or_default());
    }
}

/// One Transfer-Encoding line with the codings of all of them, empty list elements dropped:
/// the next hop reads exactly the list we did (`chunked,` and `chunked` alike end in chunked
/// for us; a recipient that does not skip the empty element would disagree).
fn transfer_encoding(out: &mut Vec<u8>, buf: &[u8], fields: &Fields) {
    out.extend_from_slice(b"Transfer-Encoding: ");
    let mut first = true;
    for h in fields
        .headers
        .iter()
        .filter(|h| h.kind == HeaderKind::TransferEncoding)
    {
        for coding in list_tokens(h.value.of(buf)) {
            if !first {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(coding);
            first = false;
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn connection(out: &mut Vec<u8>, keep_alive: bool, client: Version, tunnel: bool) {
    if tunnel {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

fn status_code(out: &mut Vec<u8>, status: u16) {
    // Parsed statuses are 100..=999; generated ones are ours.
    let s = status.clamp(100, 999);
    out.extend_from_slice(&[
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]);
}

/// The two lowercase hex digits of `byte`, from a table (one lookup for both).
#[inline]
pub fn hex_pair(byte: u8) -> [u8; 2] {
    HEX_PAIRS[usize::from(byte)]
}

const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    pairs
};

/// Appends `n` in decimal.
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The reason phrase we send with a status we generate (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_fields_give_the_same_bytes_for_every_request() {
        for (status, body, extra) in [
            (200, &b"hello\n"[..], &b"X-A: 1\r\n"[..]),
            (204, b"", b""),
            (404, b"gone", b"Content-Type: text/html\r\n"),
        ] {
            let g = |keep_alive, client_version, head_only, ready| Generated {
                status,
                content_type: b"text/plain",
                body,
                extra,
                keep_alive,
                client_version,
                head_only,
                ready,
            };
            let mut fields_made = Vec::new();
            fields(
                &mut fields_made,
                &g(true, Version::Http11, false, None),
                body.len(),
            );
            for keep in [true, false] {
                for version in [Version::Http10, Version::Http11] {
                    for head_only in [true, false] {
                        let (mut plain, mut prepared) = (Vec::new(), Vec::new());
                        generated(&mut plain, &g(keep, version, head_only, None));
                        generated(
                            &mut prepared,
                            &g(keep, version, head_only, Some(&fields_made)),
                        );
                        assert_eq!(plain, prepared, "{status} {keep} {version:?} {head_only}");
                    }
                }
            }
        }
    }
}
