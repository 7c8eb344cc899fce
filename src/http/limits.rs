//! Bounds on what a peer may make the codec hold: every size the client controls has one.

/// Parser limits. Defaults follow common practice (nginx's `large_client_header_buffers`,
/// hyper's 100 headers); the gateway config overrides them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Longest request line (method, target, version) before 414. RFC 9112 §3 recommends
    /// supporting at least 8000 octets.
    pub max_request_line: usize,
    /// Largest head (request/status line plus fields plus the empty line) before 431.
    pub max_head: usize,
    /// Most header fields in one head before 431.
    pub max_headers: usize,
    /// Longest chunk extension on one chunk-size line (RFC 9112 §7.1.1 lets us bound it).
    pub max_chunk_ext: usize,
    /// Largest trailer section of a chunked body.
    pub max_trailers: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_request_line: 8 * 1024,
        max_head: 32 * 1024,
        max_headers: 100,
        max_chunk_ext: 1024,
        max_trailers: 8 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
