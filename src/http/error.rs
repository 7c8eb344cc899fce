//! Why a head or body was refused: a small `Copy` enum that names the RFC rule, the status code
//! the gateway answers with, and the label it is counted under.

/// A framing or syntax error in an HTTP/1.1 message, found by the codec.
///
/// Each variant is one rule of RFC 9112 / RFC 9110 (or one of our documented limits). When the
/// message came from a client, [`ParseError::status`] is the answer; when it came from an
/// upstream, the proxy answers 502 instead and counts the same label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// Request line is not `method SP target SP version CRLF` (RFC 9112 §3).
    #[error("malformed request line")]
    BadRequestLine,
    /// Method is empty or holds a byte that is not a `tchar` (RFC 9110 §5.6.2).
    #[error("invalid character in method")]
    InvalidMethod,
    /// Request target is empty, holds a byte outside VCHAR, or is not in the form its method
    /// allows (RFC 9112 §3.2).
    #[error("invalid request target")]
    InvalidTarget,
    /// Version is not `HTTP/DIGIT.DIGIT` (RFC 9112 §2.3).
    #[error("malformed HTTP version")]
    InvalidVersion,
    /// Well-formed version other than 1.0 or 1.1 (RFC 9110 §15.6.6).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// A line ends in a bare LF, or a CR is not followed by LF (RFC 9112 §2.2).
    #[error("bare CR or LF as line ending")]
    BareLineEnding,
    /// Field name is empty or holds a byte that is not a `tchar` (RFC 9110 §5.1).
    #[error("invalid character in header name")]
    InvalidHeaderName,
    /// Whitespace between a field name and the colon (RFC 9112 §5.1).
    #[error("whitespace before colon in header")]
    WhitespaceBeforeColon,
    /// Header line without a colon.
    #[error("header line without colon")]
    MissingColon,
    /// A line starting with SP or HTAB: obsolete line folding (RFC 9112 §5.2).
    #[error("obsolete line folding")]
    ObsFold,
    /// NUL, CR, LF or another control byte inside a field value (RFC 9110 §5.5).
    #[error("invalid character in header value")]
    InvalidHeaderValue,
    /// HTTP/1.1 request without a Host header (RFC 9112 §3.2).
    #[error("missing Host header")]
    MissingHost,
    /// More than one Host header (RFC 9112 §3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    /// Host value is not `uri-host [ ":" port ]` (RFC 9110 §7.2).
    #[error("invalid Host header")]
    InvalidHost,
    /// Content-Length that is not a decimal number, overflows, or whose values differ
    /// (RFC 9112 §6.3).
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Both Content-Length and Transfer-Encoding in a request (RFC 9112 §6.3): the classic
    /// smuggling shape, never forwarded.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding whose last coding is not `chunked`, that applies `chunked` twice, is
    /// empty, or arrives in an HTTP/1.0 request (RFC 9112 §6.1).
    #[error("invalid Transfer-Encoding")]
    InvalidTransferEncoding,
    /// Transfer coding we do not know (RFC 9112 §6.1: 501).
    #[error("unknown transfer coding")]
    UnknownTransferCoding,
    /// Request line longer than `max_request_line`.
    #[error("request line too long")]
    RequestLineTooLong,
    /// Head larger than `max_head`.
    #[error("header section too large")]
    HeadTooLarge,
    /// More header fields than `max_headers`.
    #[error("too many headers")]
    TooManyHeaders,
    /// Status line is not `HTTP-version SP 3DIGIT SP reason CRLF` (RFC 9112 §4).
    #[error("malformed status line")]
    BadStatusLine,
    /// Chunk size with a sign, inner whitespace, a non-hex byte, or more than 16 hex digits
    /// (RFC 9112 §7.1).
    #[error("invalid chunk size")]
    InvalidChunkSize,
    /// Chunk extension longer than `max_chunk_ext`, or holding control bytes.
    #[error("invalid or oversized chunk extension")]
    InvalidChunkExtension,
    /// Chunk data not followed by exactly CRLF.
    #[error("chunk data not followed by CRLF")]
    InvalidChunkTerminator,
    /// Malformed trailer field, or a trailer section over `max_trailers`.
    #[error("invalid or oversized trailer section")]
    InvalidTrailer,
}

impl ParseError {
    /// The status a client gets for this error in its request.
    pub const fn status(self) -> u16 {
        match self {
            Self::UnsupportedVersion => 505,
            Self::UnknownTransferCoding => 501,
            Self::RequestLineTooLong => 414,
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            _ => 400,
        }
    }

    /// A stable, low-cardinality label for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Self::BadRequestLine => "bad_request_line",
            Self::InvalidMethod => "invalid_method",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidVersion => "invalid_version",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BareLineEnding => "bare_line_ending",
            Self::InvalidHeaderName => "invalid_header_name",
            Self::WhitespaceBeforeColon => "whitespace_before_colon",
            Self::MissingColon => "missing_colon",
            Self::ObsFold => "obs_fold",
            Self::InvalidHeaderValue => "invalid_header_value",
            Self::MissingHost => "missing_host",
            Self::DuplicateHost => "duplicate_host",
            Self::InvalidHost => "invalid_host",
            Self::InvalidContentLength => "invalid_content_length",
            Self::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Self::InvalidTransferEncoding => "invalid_transfer_encoding",
            Self::UnknownTransferCoding => "unknown_transfer_coding",
            Self::RequestLineTooLong => "request_line_too_long",
            Self::HeadTooLarge => "head_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::BadStatusLine => "bad_status_line",
            Self::InvalidChunkSize => "invalid_chunk_size",
            Self::InvalidChunkExtension => "invalid_chunk_extension",
            Self::InvalidChunkTerminator => "invalid_chunk_terminator",
            Self::InvalidTrailer => "invalid_trailer",
        }
    }
}
