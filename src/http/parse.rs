//! Request and response heads (RFC 9112 §2–5): one pass over the bytes received so far that
//! either asks for more, rejects with the rule that was broken, or yields a head whose names
//! and values are spans into the caller's buffer, plus the facts the proxy needs (framing,
//! Host, Connection tokens, Upgrade, Expect) extracted in that same pass.
//!
//! Nothing here allocates per head: a [`RequestHead`] or [`ResponseHead`] is made once per
//! connection with room for `max_headers` fields and reused (see `tests/alloc.rs`).
//!
//! Re-parsing a growing head from its start is cheap once, but a client dribbling a 32 KiB head
//! byte by byte would make it quadratic; [`HeadScan`] lets the caller skip re-parsing until the
//! empty line that ends the head has arrived.

use super::body::Framing;
use super::chars::{is_host_char, is_tchar, skip_field_vchars, skip_tchars, skip_vchars};
use super::error::ParseError;
use super::limits::Limits;

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Heads are bounded by `Limits::max_head`, far below u32::MAX.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes this span covers in `buf` (empty if `buf` is not the parsed buffer).
    #[inline]
    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// Outcome of a parse that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The head is not complete yet: read more and call again with the grown buffer.
    Partial,
    /// The head is complete and is this many bytes long; the body (if any) follows.
    Complete(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    /// Any other token: forwarded as written.
    Other,
}

impl Method {
    fn from_token(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: a request with this method may be sent again safely.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// RFC 9112 §3.2: the four shapes of a request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`
    Absolute,
    /// `host:port`, CONNECT only
    Authority,
    /// `*`, OPTIONS only
    Asterisk,
}

/// The header names the codec treats specially, recognised (case-insensitively) while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Via,
    /// A field whose name a Connection header lists: hop-by-hop (RFC 9110 §7.6.1).
    ConnectionListed,
}

impl HeaderKind {
    fn of(name: &[u8]) -> HeaderKind {
        match name.len() {
            2 if lower_is(name, b"te") => HeaderKind::Te,
            3 if lower_is(name, b"via") => HeaderKind::Via,
            4 if lower_is(name, b"host") => HeaderKind::Host,
            6 if lower_is(name, b"expect") => HeaderKind::Expect,
            7 if lower_is(name, b"upgrade") => HeaderKind::Upgrade,
            7 if lower_is(name, b"trailer") => HeaderKind::Trailer,
            10 if lower_is(name, b"connection") => HeaderKind::Connection,
            10 if lower_is(name, b"keep-alive") => HeaderKind::KeepAlive,
            14 if lower_is(name, b"content-length") => HeaderKind::ContentLength,
            15 if lower_is(name, b"x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if lower_is(name, b"proxy-connection") => HeaderKind::ProxyConnection,
            16 if lower_is(name, b"x-forwarded-host") => HeaderKind::XForwardedHost,
            17 if lower_is(name, b"transfer-encoding") => HeaderKind::TransferEncoding,
            17 if lower_is(name, b"x-forwarded-proto") => HeaderKind::XForwardedProto,
            _ => HeaderKind::Other,
        }
    }

    /// Hop-by-hop fields a proxy must not forward (RFC 9110 §7.6.1); Upgrade is forwarded only
    /// when the connection becomes a tunnel, which the encoder decides.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::Trailer
                | HeaderKind::Upgrade
                | HeaderKind::ConnectionListed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub name: Span,
    /// The value without surrounding whitespace.
    pub value: Span,
    pub kind: HeaderKind,
}

/// The tokens of all Connection headers (RFC 9110 §7.6.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Some token names another header, which is then hop-by-hop.
    pub lists_headers: bool,
}

/// What the Transfer-Encoding headers said, accumulated over all of them in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferCodings {
    pub present: bool,
    /// The last coding is `chunked`, and `chunked` appears exactly once.
    pub chunked_last: bool,
    chunked_count: u8,
    unknown: bool,
    /// An element that is not `token *(OWS ";" ...)`.
    malformed: bool,
    codings: u8,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        // A Transfer-Encoding line without a coding is refused rather than read as nothing:
        // recipients disagree about it, which is what smuggling feeds on.
        self.malformed |= list_tokens(value).next().is_none();
        for element in value.split(|&b| b == b',') {
            let element = trim_ows(element);
            if element.is_empty() {
                // Empty list elements are allowed (RFC 9110 §5.6.1).
                continue;
            }
            // transfer-coding = token *( OWS ";" OWS transfer-parameter ) (RFC 9112 §7)
            let name_len = element
                .iter()
                .position(|&b| !is_tchar(b))
                .unwrap_or(element.len());
            let (name, params) = element.split_at(name_len);
            let params = trim_ows(params);
            self.codings = self.codings.saturating_add(1);
            if name.is_empty() || !(params.is_empty() || params.starts_with(b";")) {
                self.malformed = true;
            } else if name.eq_ignore_ascii_case(b"chunked") {
                // chunked takes no parameters.
                self.malformed |= !params.is_empty();
                self.chunked_count = self.chunked_count.saturating_add(1);
                self.chunked_last = true;
                continue;
            } else {
                let known = [
                    b"gzip" as &[u8],
                    b"x-gzip",
                    b"deflate",
                    b"compress",
                    b"x-compress",
                ];
                self.unknown |= !known.iter().any(|k| name.eq_ignore_ascii_case(k));
            }
            self.chunked_last = false;
        }
    }

    /// Chunked framing applies: `chunked` is the last coding, appears once, and the list is
    /// well-formed.
    pub fn is_chunked(&self) -> bool {
        self.chunked_last && self.chunked_count == 1 && !self.malformed
    }

    /// RFC 9112 §6.1 for requests: malformed lists are 400, unknown codings 501, anything but
    /// a single final `chunked` 400.
    fn check_request(&self) -> Result<(), ParseError> {
        if self.malformed {
            Err(ParseError::InvalidTransferEncoding)
        } else if self.unknown {
            Err(ParseError::UnknownTransferCoding)
        } else if self.codings == 0 || !self.is_chunked() {
            Err(ParseError::InvalidTransferEncoding)
        } else {
            Ok(())
        }
    }
}

/// The header section of a request or response, and the facts read from it.
#[derive(Debug, Clone)]
pub struct Fields {
    pub headers: Vec<Header>,
    pub host: Option<Span>,
    host_count: u32,
    pub content_length: Option<u64>,
    pub transfer_encoding: TransferCodings,
    pub connection: ConnectionTokens,
    pub upgrade: Option<Span>,
    pub expect_continue: bool,
}

impl Fields {
    fn with_capacity(max_headers: usize) -> Fields {
        Fields {
            headers: Vec::with_capacity(max_headers),
            host: None,
            host_count: 0,
            content_length: None,
            transfer_encoding: TransferCodings::default(),
            connection: ConnectionTokens::default(),
            upgrade: None,
            expect_continue: false,
        }
    }

    /// These fields, cleared, taken out for a new head; an empty table with no room is left.
    fn recycled(&mut self) -> Fields {
        let mut fields = std::mem::replace(self, Fields::with_capacity(0));
        fields.clear();
        fields
    }

    fn clear(&mut self) {
        self.headers.clear();
        self.host = None;
        self.host_count = 0;
        self.content_length = None;
        self.transfer_encoding = TransferCodings::default();
        self.connection = ConnectionTokens::default();
        self.upgrade = None;
        self.expect_continue = false;
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn get<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.of(buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.of(buf))
    }

    fn record(&mut self, buf: &[u8], name: Span, value: Span) -> Result<(), ParseError> {
        let kind = HeaderKind::of(name.of(buf));
        let v = value.of(buf);
        match kind {
            HeaderKind::Host => {
                self.host_count += 1;
                self.host.get_or_insert(value);
            }
            HeaderKind::ContentLength => {
                let n = parse_content_length(v)?;
                if self.content_length.is_some_and(|seen| seen != n) {
                    return Err(ParseError::InvalidContentLength);
                }
                self.content_length = Some(n);
            }
            HeaderKind::TransferEncoding => self.transfer_encoding.add(v),
            HeaderKind::Connection => {
                for token in list_tokens(v) {
                    match token.len() {
                        5 if lower_is(token, b"close") => self.connection.close = true,
                        10 if lower_is(token, b"keep-alive") => self.connection.keep_alive = true,
                        7 if lower_is(token, b"upgrade") => self.connection.upgrade = true,
                        _ => self.connection.lists_headers = true,
                    }
                }
            }
            HeaderKind::Upgrade => self.upgrade = Some(value),
            HeaderKind::Expect => self.expect_continue |= v.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
        self.headers.push(Header { name, value, kind });
        Ok(())
    }

    /// Marks the fields a Connection header names as hop-by-hop. Framing fields and Host are
    /// never demoted this way: a client must not be able to make the proxy drop them.
    fn mark_connection_listed(&mut self, buf: &[u8]) {
        if !self.connection.lists_headers {
            return;
        }
        for i in 0..self.headers.len() {
            let Some(conn) = self.headers.get(i).copied() else {
                break;
            };
            if conn.kind != HeaderKind::Connection {
                continue;
            }
            for token in list_tokens(conn.value.of(buf)) {
                for h in self.headers.iter_mut() {
                    let demotable = matches!(
                        h.kind,
                        HeaderKind::Other
                            | HeaderKind::XForwardedFor
                            | HeaderKind::XForwardedProto
                            | HeaderKind::XForwardedHost
                            | HeaderKind::Via
                            | HeaderKind::Expect
                    );
                    if demotable && h.name.of(buf).eq_ignore_ascii_case(token) {
                        h.kind = HeaderKind::ConnectionListed;
                    }
                }
            }
        }
    }
}

/// A parsed request head. Make one per connection with [`RequestHead::new`] and reuse it.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    pub target: Span,
    pub form: TargetForm,
    /// Path and query: the whole target in origin-form, the part after the authority in
    /// absolute-form (may be empty or start with `?`), empty otherwise.
    pub path: Span,
    /// The authority of an absolute-form or authority-form target, else empty.
    pub authority: Span,
    pub version: Version,
    pub fields: Fields,
    /// Length of the head in bytes, including leading empty lines and the final CRLF.
    pub len: usize,
}

impl RequestHead {
    pub fn new(limits: &Limits) -> RequestHead {
        RequestHead::with_fields(Fields::with_capacity(limits.max_headers))
    }

    fn with_fields(fields: Fields) -> RequestHead {
        RequestHead {
            method: Method::Get,
            method_span: Span::default(),
            target: Span::default(),
            form: TargetForm::Origin,
            path: Span::default(),
            authority: Span::default(),
            version: Version::Http11,
            fields,
            len: 0,
        }
    }

    /// Makes this head as [`RequestHead::new`] makes one, keeping the room for its fields:
    /// for the next connection to use.
    pub fn recycle(&mut self) {
        *self = RequestHead::with_fields(self.fields.recycled());
    }

    /// Parses the request head at the start of `buf`.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Status, ParseError> {
        self.fields.clear();
        let line_start = skip_empty_lines(buf);
        let line = match line_start.and_then(|start| self.request_line(buf, start)) {
            Ok(end) => end,
            Err(Stop::Partial) => {
                let start = line_start.unwrap_or(0);
                return if buf.len() >= limits.max_head {
                    Err(ParseError::HeadTooLarge)
                } else if buf.len() - start > limits.max_request_line {
                    Err(ParseError::RequestLineTooLong)
                } else {
                    Ok(Status::Partial)
                };
            }
            Err(Stop::Invalid(e)) => return Err(e),
        };
        if line.end - line.start - 2 > limits.max_request_line {
            return Err(ParseError::RequestLineTooLong);
        }
        let end = match parse_fields(buf, line.end, limits, &mut self.fields) {
            Ok(end) => end,
            Err(Stop::Partial) if buf.len() >= limits.max_head => {
                return Err(ParseError::HeadTooLarge)
            }
            Err(Stop::Partial) => return Ok(Status::Partial),
            Err(Stop::Invalid(e)) => return Err(e),
        };
        self.check(buf)?;
        self.fields.mark_connection_listed(buf);
        self.len = end;
        Ok(Status::Complete(end))
    }

    /// Method, target and version; returns where the line starts and where the next begins.
    fn request_line(&mut self, buf: &[u8], start: usize) -> Result<Line, Stop> {
        let method_end = skip_tchars(buf, start);
        match buf.get(method_end) {
            None => return Err(Stop::Partial),
            Some(b' ') if method_end > start => {}
            Some(_) => return Err(ParseError::InvalidMethod.into()),
        }
        self.method_span = Span::new(start, method_end);
        self.method = Method::from_token(self.method_span.of(buf));

        let target_start = method_end + 1;
        let target_end = skip_vchars(buf, target_start);
        match buf.get(target_end) {
            None => return Err(Stop::Partial),
            Some(b' ') if target_end > target_start => {}
            Some(b'\r' | b'\n') => return Err(ParseError::BadRequestLine.into()),
            Some(_) => return Err(ParseError::InvalidTarget.into()),
        }
        self.target = Span::new(target_start, target_end);

        let version_start = target_end + 1;
        self.version = match parse_version(buf, version_start)? {
            (1, 1) => Version::Http11,
            (1, 0) => Version::Http10,
            _ => return Err(ParseError::UnsupportedVersion.into()),
        };
        let end = expect_crlf(buf, version_start + 8, ParseError::InvalidVersion)?;
        Ok(Line { start, end })
    }

    /// The semantic rules that need the whole head: target form, Host, framing.
    fn check(&mut self, buf: &[u8]) -> Result<(), ParseError> {
        self.classify_target(buf)?;
        let f = &self.fields;
        match (self.version, f.host_count) {
            (Version::Http11, 0) => return Err(ParseError::MissingHost),
            (_, 2..) => return Err(ParseError::DuplicateHost),
            _ => {}
        }
        if let Some(host) = f.host {
            if !host.of(buf).iter().all(|&b| is_host_char(b)) {
                return Err(ParseError::InvalidHost);
            }
        }
        if f.transfer_encoding.present {
            if f.content_length.is_some() {
                return Err(ParseError::ContentLengthWithTransferEncoding);
            }
            if self.version == Version::Http10 {
                return Err(ParseError::InvalidTransferEncoding);
            }
            f.transfer_encoding.check_request()?;
        }
        Ok(())
    }

    fn classify_target(&mut self, buf: &[u8]) -> Result<(), ParseError> {
        let target = self.target.of(buf);
        let start = self.target.start as usize;
        let is_connect = self.method == Method::Connect;
        (self.form, self.path, self.authority) = match target.first() {
            Some(b'/') if !is_connect => (TargetForm::Origin, self.target, Span::default()),
            Some(b'*') if target.len() == 1 && self.method == Method::Options => {
                (TargetForm::Asterisk, Span::default(), Span::default())
            }
            _ if is_connect => {
                if !is_authority(target) || !target.contains(&b':') {
                    return Err(ParseError::InvalidTarget);
                }
                (TargetForm::Authority, Span::default(), self.target)
            }
            _ => {
                let (authority, path) = split_absolute(target).ok_or(ParseError::InvalidTarget)?;
                (
                    TargetForm::Absolute,
                    Span::new(start + path.start, start + path.end),
                    Span::new(start + authority.start, start + authority.end),
                )
            }
        };
        Ok(())
    }

    /// Host to route on: an absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        match self.form {
            TargetForm::Absolute | TargetForm::Authority => self.authority.of(buf),
            _ => self.fields.host.map(|h| h.of(buf)).unwrap_or_default(),
        }
    }

    /// How the request body is framed (RFC 9112 §6.3): no body unless it says so.
    pub fn framing(&self) -> Framing {
        if self.fields.transfer_encoding.present {
            Framing::Chunked
        } else {
            Framing::Length(self.fields.content_length.unwrap_or(0))
        }
    }

    /// Whether the client wants the connection kept after this exchange (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        let c = self.fields.connection;
        match self.version {
            Version::Http11 => !c.close,
            Version::Http10 => c.keep_alive && !c.close,
        }
    }

    /// The client asks to switch protocols (WebSocket): Connection: upgrade plus Upgrade.
    pub fn wants_upgrade(&self) -> bool {
        self.fields.connection.upgrade && self.fields.upgrade.is_some()
    }
}

/// A parsed response head. Make one per upstream connection and reuse it.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: Span,
    pub fields: Fields,
    pub len: usize,
}

impl ResponseHead {
    pub fn new(limits: &Limits) -> ResponseHead {
        ResponseHead::with_fields(Fields::with_capacity(limits.max_headers))
    }

    fn with_fields(fields: Fields) -> ResponseHead {
        ResponseHead {
            version: Version::Http11,
            status: 0,
            reason: Span::default(),
            fields,
            len: 0,
        }
    }

    /// Makes this head as [`ResponseHead::new`] makes one, keeping the room for its fields.
    pub fn recycle(&mut self) {
        *self = ResponseHead::with_fields(self.fields.recycled());
    }

    /// Parses the response head at the start of `buf`.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Status, ParseError> {
        self.fields.clear();
        let parsed = self
            .status_line(buf)
            .and_then(|line_end| parse_fields(buf, line_end, limits, &mut self.fields));
        let end = match parsed {
            Ok(end) => end,
            Err(Stop::Partial) if buf.len() >= limits.max_head => {
                return Err(ParseError::HeadTooLarge)
            }
            Err(Stop::Partial) => return Ok(Status::Partial),
            Err(Stop::Invalid(e)) => return Err(e),
        };
        let f = &self.fields;
        if f.transfer_encoding.present && f.content_length.is_some() {
            // RFC 9112 §6.3 calls this a likely smuggling or splitting attempt; we refuse it.
            return Err(ParseError::ContentLengthWithTransferEncoding);
        }
        self.fields.mark_connection_listed(buf);
        self.len = end;
        Ok(Status::Complete(end))
    }

    fn status_line(&mut self, buf: &[u8]) -> Result<usize, Stop> {
        self.version = match parse_version(buf, 0) {
            Ok((1, 1)) => Version::Http11,
            Ok((1, 0)) => Version::Http10,
            Ok(_) => return Err(ParseError::UnsupportedVersion.into()),
            Err(Stop::Invalid(_)) => return Err(ParseError::BadStatusLine.into()),
            Err(Stop::Partial) => return Err(Stop::Partial),
        };
        let digits = buf.get(8..12).ok_or(Stop::Partial)?;
        let [b' ', d1 @ b'1'..=b'9', d2 @ b'0'..=b'9', d3 @ b'0'..=b'9'] = *digits else {
            return Err(ParseError::BadStatusLine.into());
        };
        self.status = u16::from(d1 - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0');
        // The SP before an empty reason is required by the grammar but often missing.
        let reason_start = match buf.get(12) {
            Some(b' ') => 13,
            Some(b'\r') => 12,
            Some(b'\n') => return Err(ParseError::BareLineEnding.into()),
            Some(_) => return Err(ParseError::BadStatusLine.into()),
            None => return Err(Stop::Partial),
        };
        let mut pos = reason_start;
        loop {
            pos = skip_field_vchars(buf, pos);
            match buf.get(pos) {
                Some(b'\t') => pos += 1,
                _ => break,
            }
        }
        self.reason = Span::new(reason_start, pos);
        expect_crlf(buf, pos, ParseError::BadStatusLine)
    }

    /// How the body of this response to a `method` request is framed (RFC 9112 §6.3): HEAD
    /// answers and 1xx, 204 and 304 have none; chunked if `chunked` is the last coding; read to
    /// close if another coding is last or no length is given.
    pub fn framing(&self, method: Method) -> Framing {
        if !self.has_body(method) {
            Framing::Length(0)
        } else if self.fields.transfer_encoding.present {
            if self.fields.transfer_encoding.is_chunked() {
                Framing::Chunked
            } else {
                Framing::Eof
            }
        } else if let Some(n) = self.fields.content_length {
            Framing::Length(n)
        } else {
            Framing::Eof
        }
    }

    /// RFC 9110 §6.4.1: responses to HEAD, and 1xx, 204 and 304 responses, carry no content.
    pub fn has_body(&self, method: Method) -> bool {
        !(method == Method::Head || self.is_informational() || matches!(self.status, 204 | 304))
    }

    /// 1xx: another response head follows (except 101, after which the tunnel starts).
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// The upstream lets the connection be reused after this response.
    pub fn keep_alive(&self) -> bool {
        let c = self.fields.connection;
        match self.version {
            Version::Http11 => !c.close,
            Version::Http10 => c.keep_alive && !c.close,
        }
    }
}

/// Finds the empty line that ends a head without parsing it, remembering how far it looked,
/// so that a head arriving in many small reads is scanned once in all (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadScan {
    scanned: usize,
}

impl HeadScan {
    /// Whether `buf` (which grows between calls, same start) holds a line feed that ends an
    /// empty line: the head is then complete or certainly broken, and worth parsing.
    pub fn ready(&mut self, buf: &[u8]) -> bool {
        // Step back so an LF CR LF split across two reads is still seen.
        let mut from = self.scanned.saturating_sub(2);
        while let Some(i) = buf.get(from..).and_then(|rest| memchr::memchr(b'\n', rest)) {
            let lf = from + i;
            if lf > 0 {
                let before = buf.get(..lf).unwrap_or_default();
                if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
                    return true;
                }
            }
            from = lf + 1;
        }
        self.scanned = buf.len();
        false
    }
}

/// Why a step of the parser stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Partial,
    Invalid(ParseError),
}

impl From<ParseError> for Stop {
    fn from(e: ParseError) -> Stop {
        Stop::Invalid(e)
    }
}

/// A start line: where it begins, and where the next line begins (after its CRLF).
struct Line {
    start: usize,
    end: usize,
}

/// RFC 9112 §2.2: a server SHOULD ignore empty lines before the request line.
fn skip_empty_lines(buf: &[u8]) -> Result<usize, Stop> {
    let mut pos = 0;
    loop {
        match buf.get(pos) {
            Some(b'\r') => pos = expect_crlf(buf, pos, ParseError::BareLineEnding)?,
            Some(b'\n') => return Err(ParseError::BareLineEnding.into()),
            Some(_) => return Ok(pos),
            None => return Err(Stop::Partial),
        }
    }
}

/// Expects CRLF at `pos` and returns the position after it. A lone LF is a bare line ending;
/// a CR followed by anything but LF too; any other byte is `otherwise`.
#[inline]
fn expect_crlf(buf: &[u8], pos: usize, otherwise: ParseError) -> Result<usize, Stop> {
    match buf.get(pos) {
        Some(b'\r') => match buf.get(pos + 1) {
            Some(b'\n') => Ok(pos + 2),
            Some(_) => Err(ParseError::BareLineEnding.into()),
            None => Err(Stop::Partial),
        },
        Some(b'\n') => Err(ParseError::BareLineEnding.into()),
        Some(_) => Err(otherwise.into()),
        None => Err(Stop::Partial),
    }
}

/// `HTTP/DIGIT.DIGIT` at `pos` (RFC 9112 §2.3): (major, minor), or partial if what is there
/// so far could still become one.
#[inline]
fn parse_version(buf: &[u8], pos: usize) -> Result<(u8, u8), Stop> {
    if let Some(v) = buf.get(pos..pos + 8) {
        return match *v {
            [b'H', b'T', b'T', b'P', b'/', major @ b'0'..=b'9', b'.', minor @ b'0'..=b'9'] => {
                Ok((major - b'0', minor - b'0'))
            }
            _ => Err(ParseError::InvalidVersion.into()),
        };
    }
    let have = buf.get(pos..).unwrap_or_default();
    let fits = have.iter().zip(b"HTTP/0.0").all(|(&b, &p)| {
        if p == b'0' {
            b.is_ascii_digit()
        } else {
            b == p
        }
    });
    if fits {
        Err(Stop::Partial)
    } else {
        Err(ParseError::InvalidVersion.into())
    }
}

/// The header section from `pos` to the empty line; returns the position after it.
fn parse_fields(
    buf: &[u8],
    mut pos: usize,
    limits: &Limits,
    fields: &mut Fields,
) -> Result<usize, Stop> {
    loop {
        let name_start = pos;
        pos = skip_tchars(buf, pos);
        match buf.get(pos) {
            Some(b':') if pos > name_start => {}
            None => return Err(Stop::Partial),
            // Not a field line at all: the end of the head, or a broken line.
            Some(b'\r') if pos == name_start => {
                return expect_crlf(buf, pos, ParseError::BareLineEnding)
            }
            Some(b'\n') if pos == name_start => return Err(ParseError::BareLineEnding.into()),
            Some(b' ' | b'\t') if pos == name_start => return Err(ParseError::ObsFold.into()),
            Some(b' ' | b'\t') => return Err(ParseError::WhitespaceBeforeColon.into()),
            Some(b'\r' | b'\n') => return Err(ParseError::MissingColon.into()),
            Some(_) => return Err(ParseError::InvalidHeaderName.into()),
        }
        let name = Span::new(name_start, pos);
        pos += 1;
        // Nearly every value follows one SP: settle that without the loop.
        if buf.get(pos) == Some(&b' ') {
            pos += 1;
        }
        while let Some(b' ' | b'\t') = buf.get(pos) {
            pos += 1;
        }
        let value_start = pos;
        loop {
            pos = skip_field_vchars(buf, pos);
            match buf.get(pos) {
                Some(b'\t') => pos += 1,
                _ => break,
            }
        }
        let mut value_end = pos;
        let next = match buf.get(pos) {
            Some(b'\r') => match buf.get(pos + 1) {
                Some(b'\n') => pos + 2,
                None => return Err(Stop::Partial),
                Some(_) => return Err(ParseError::InvalidHeaderValue.into()),
            },
            Some(b'\n') => return Err(ParseError::BareLineEnding.into()),
            Some(_) => return Err(ParseError::InvalidHeaderValue.into()),
            None => return Err(Stop::Partial),
        };
        while value_end > value_start && matches!(buf.get(value_end - 1), Some(b' ' | b'\t')) {
            value_end -= 1;
        }
        if next > limits.max_head {
            return Err(ParseError::HeadTooLarge.into());
        }
        if fields.headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders.into());
        }
        fields.record(buf, name, Span::new(value_start, value_end))?;
        pos = next;
    }
}

/// Whether the field name `name` is `known` (lowercase letters and `-`) in any case. `name`
/// holds tchars only, or the bytes of a field value, which hold no CR: setting bit 0x20
/// lowercases a letter and turns no other such byte into a letter or `-` (only CR becomes
/// `-`), so one OR and one compare decide, without branches (the byte-wise
/// `eq_ignore_ascii_case` was 4% of a proxied request's instructions). Names of 4 bytes and
/// more are compared as overlapping words, the first and the last 4 or 8 bytes (a byte
/// at a time cost about 3 instructions a byte, twice for a 10-byte name that is neither
/// Connection nor Keep-Alive).
#[inline(always)]
fn lower_is<const N: usize>(name: &[u8], known: &[u8; N]) -> bool {
    let Some(name) = name.first_chunk::<N>() else {
        return false;
    };
    // Three words cover up to 24 bytes; the longest known name has 17.
    const { assert!(N <= 24) };
    if N >= 8 {
        let mut diff =
            word_differs::<8>(name, known, 0) | word_differs::<8>(name, known, N.saturating_sub(8));
        if N > 16 {
            diff |= word_differs::<8>(name, known, 8);
        }
        diff == 0
    } else if N >= 4 {
        word_differs::<4>(name, known, 0) | word_differs::<4>(name, known, N.saturating_sub(4)) == 0
    } else {
        let mut diff = 0;
        for (a, b) in name.iter().zip(known) {
            diff |= (a | 0x20) ^ b;
        }
        diff == 0
    }
}

/// The bits in which the `W` bytes of `name` at `at`, with bit 0x20 set in each, differ
/// from those of `known` (0 when they match).
#[inline(always)]
fn word_differs<const W: usize>(name: &[u8], known: &[u8], at: usize) -> u64 {
    let word = |bytes: &[u8]| {
        let mut w = [0u8; 8];
        if let (Some(dst), Some(src)) = (w.get_mut(..W), bytes.get(at..at + W)) {
            dst.copy_from_slice(src);
        }
        u64::from_le_bytes(w)
    };
    let fold = 0x2020_2020_2020_2020_u64 >> (64 - 8 * W);
    (word(name) | fold) ^ word(known)
}

/// Content-Length (RFC 9110 §8.6): 1*DIGIT, or a list of identical such values.
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let mut result = None;
    for element in value.split(|&b| b == b',') {
        let digits = trim_ows(element);
        if digits.is_empty() || digits.len() > 19 {
            // 19 digits always fit in a u64; more is an attack or a mistake.
            return Err(ParseError::InvalidContentLength);
        }
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(ParseError::InvalidContentLength);
            }
            n = n * 10 + u64::from(d - b'0');
        }
        if result.is_some_and(|r| r != n) {
            return Err(ParseError::InvalidContentLength);
        }
        result = Some(n);
    }
    result.ok_or(ParseError::InvalidContentLength)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The non-empty elements of a comma-separated list (RFC 9110 §5.6.1).
pub(crate) fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// `host:port` of a CONNECT target, or the authority of an absolute URI: host characters only,
/// no userinfo (RFC 9110 §4.2.4 forbids it in http URIs).
fn is_authority(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_host_char(b))
}

/// `scheme "://" authority [path-abempty] ["?" query]` (RFC 9112 §3.2.2): the ranges of the
/// authority and of what follows it, relative to `target`.
fn split_absolute(target: &[u8]) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = target.get(..colon)?;
    let first_alpha = scheme.first().is_some_and(u8::is_ascii_alphabetic);
    if !first_alpha
        || !scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        || target.get(colon..colon + 3) != Some(b"://")
    {
        return None;
    }
    let auth_start = colon + 3;
    let rest = target.get(auth_start..)?;
    let auth_len = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if !is_authority(rest.get(..auth_len)?) {
        return None;
    }
    if rest.get(auth_len) == Some(&b'#') {
        return None;
    }
    Some((
        auth_start..auth_start + auth_len,
        auth_start + auth_len..target.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::chars::is_tchar;

    /// The tokens of a Connection value are compared as words (`lower_is`), which is exact
    /// for the bytes a value may hold: any case of a known token, and no other byte.
    #[test]
    fn connection_tokens_match_in_any_case_and_nothing_else() {
        let flags = |value: &[u8]| {
            let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: ".to_vec();
            raw.extend_from_slice(value);
            raw.extend_from_slice(b"\r\n\r\n");
            let mut head = RequestHead::new(&Limits::DEFAULT);
            match head.parse(&raw, &Limits::DEFAULT) {
                Ok(Status::Complete(_)) => head.fields.connection,
                other => panic!("{}: {other:?}", String::from_utf8_lossy(value)),
            }
        };
        type IsSet = fn(ConnectionTokens) -> bool;
        let known: [(&[u8], IsSet); 3] = [
            (b"close", |c| c.close),
            (b"keep-alive", |c| c.keep_alive),
            (b"upgrade", |c| c.upgrade),
        ];
        // The bytes a field value may hold (RFC 9110 §5.5).
        let value_bytes = (0..=255u8)
            .filter(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80);
        for (token, is_set) in known {
            let c = flags(token);
            assert!(
                is_set(c) && !c.lists_headers,
                "{}",
                String::from_utf8_lossy(token)
            );
            assert!(is_set(flags(&token.to_ascii_uppercase())));
            for i in 0..token.len() {
                for b in value_bytes
                    .clone()
                    .filter(|b| !b.eq_ignore_ascii_case(&token[i]))
                {
                    let mut other = token.to_vec();
                    other[i] = b;
                    let c = flags(&other);
                    assert!(
                        !is_set(c) && c.lists_headers,
                        "{}",
                        String::from_utf8_lossy(&other)
                    );
                }
            }
        }
    }

    #[test]
    fn header_kinds_match_in_any_case_and_nothing_else() {
        let known: [&[u8]; 14] = [
            b"te",
            b"via",
            b"host",
            b"expect",
            b"upgrade",
            b"trailer",
            b"connection",
            b"keep-alive",
            b"content-length",
            b"x-forwarded-for",
            b"proxy-connection",
            b"x-forwarded-host",
            b"transfer-encoding",
            b"x-forwarded-proto",
        ];
        for name in known {
            let kind = HeaderKind::of(name);
            assert_ne!(kind, HeaderKind::Other, "{}", String::from_utf8_lossy(name));
            assert_eq!(HeaderKind::of(&name.to_ascii_uppercase()), kind);
            // Any other tchar in any position makes another field.
            for i in 0..name.len() {
                for b in (0..=255u8).filter(|&b| is_tchar(b) && !b.eq_ignore_ascii_case(&name[i])) {
                    let mut other = name.to_vec();
                    other[i] = b;
                    assert_ne!(
                        HeaderKind::of(&other),
                        kind,
                        "{}",
                        String::from_utf8_lossy(&other)
                    );
                }
            }
        }
    }
}
