//! The rules of RFC 9111 for a shared cache that never revalidates: what a request allows,
//! what a response allows, how long it stays fresh, and when a conditional request is
//! answered with 304. Pure functions over parsed fields.

use std::time::Duration;

use super::date;
use crate::http::parse::{list_tokens, Fields};

/// Status codes stored (RFC 9110 §15.1 lists them as heuristically cacheable, less 206, whose
/// ranges we do not combine, and 405/414/501, which a route answers the same way every time
/// without the upstream's help).
const STORABLE: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// A response whose Vary names more fields than this is not stored: each name costs every
/// lookup of the URL a scan of the request's fields.
const MAX_VARY_NAMES: usize = 8;

/// RFC 9111 §1.2.2: a delta-seconds too large to hold is read as 2^31.
const DELTA_SECONDS_MAX: u64 = 1 << 31;

pub(super) fn storable_status(status: u16) -> bool {
    STORABLE.contains(&status)
}

/// What the request's Cache-Control (or, without one, `Pragma: no-cache`) asks of us.
#[derive(Debug, Default)]
pub(super) struct Request {
    /// Store nothing of this exchange (a stored response may still answer it).
    pub no_store: bool,
    /// Do not answer from the cache.
    pub no_cache: bool,
    /// Do not answer with a response older than this many seconds.
    pub max_age: Option<u64>,
}

impl Request {
    pub fn read(buf: &[u8], fields: &Fields) -> Request {
        let mut r = Request::default();
        let mut has_cache_control = false;
        for value in values(buf, fields, b"cache-control") {
            has_cache_control = true;
            for (name, arg) in Directives(value) {
                if name.eq_ignore_ascii_case(b"no-store") {
                    r.no_store = true;
                } else if name.eq_ignore_ascii_case(b"no-cache") {
                    r.no_cache = true;
                } else if name.eq_ignore_ascii_case(b"max-age") && r.max_age.is_none() {
                    // An unreadable max-age asks for nothing we can honor: ignored.
                    r.max_age = delta_seconds(arg);
                }
            }
        }
        // RFC 9111 §5.4: Pragma counts only where Cache-Control is absent (HTTP/1.0 clients).
        if !has_cache_control {
            r.no_cache = values(buf, fields, b"pragma")
                .flat_map(list_tokens)
                .any(|t| t.eq_ignore_ascii_case(b"no-cache"));
        }
        r
    }
}

/// What the response's Cache-Control says. Where a directive repeats, the first counts.
#[derive(Debug, Default)]
pub(super) struct Response {
    pub no_store: bool,
    /// With or without field names: we never revalidate, so either means "do not store".
    pub no_cache: bool,
    /// With or without field names: a shared cache must not store it (or those fields).
    pub private: bool,
    pub public: bool,
    /// Seconds; an unreadable value reads as 0 (stale, RFC 9111 §4.2.1).
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl Response {
    pub fn read(buf: &[u8], fields: &Fields) -> Response {
        let mut r = Response::default();
        for value in values(buf, fields, b"cache-control") {
            for (name, arg) in Directives(value) {
                let is = |d: &[u8]| name.eq_ignore_ascii_case(d);
                if is(b"no-store") {
                    r.no_store = true;
                } else if is(b"no-cache") {
                    r.no_cache = true;
                } else if is(b"private") {
                    r.private = true;
                } else if is(b"public") {
                    r.public = true;
                } else if is(b"max-age") && r.max_age.is_none() {
                    r.max_age = Some(delta_seconds(arg).unwrap_or(0));
                } else if is(b"s-maxage") && r.s_maxage.is_none() {
                    r.s_maxage = Some(delta_seconds(arg).unwrap_or(0));
                }
            }
        }
        r
    }

    /// RFC 9111 §4.2.1: `s-maxage`, then `max-age`, then `Expires − Date`; `None` when the
    /// response gives no lifetime (the route's default TTL may then apply). An `Expires`
    /// that cannot be read, or that comes without a `Date` to measure it from (we are given
    /// no wall clock), means already stale.
    pub fn lifetime(&self, buf: &[u8], fields: &Fields) -> Option<Duration> {
        if let Some(seconds) = self.s_maxage.or(self.max_age) {
            return Some(Duration::from_secs(seconds));
        }
        let expires = fields.get(buf, b"expires")?;
        let span = date::parse(expires)
            .zip(fields.get(buf, b"date").and_then(date::parse))
            .map_or(0, |(expires, date)| expires.saturating_sub(date).max(0));
        Some(Duration::from_secs(span.unsigned_abs()))
    }
}

/// The Age the response arrived with (RFC 9111 §5.1); an unreadable one counts as none.
pub(super) fn age(buf: &[u8], fields: &Fields) -> Duration {
    let seconds = fields.get(buf, b"age").and_then(delta_seconds);
    Duration::from_secs(seconds.unwrap_or(0))
}

/// The lowercased field names of all Vary fields, comma-separated (empty: no Vary); `None`
/// for `Vary: *`, after which no later request can be known to match (RFC 9111 §4.1), or for
/// more than [`MAX_VARY_NAMES`] names.
pub(super) fn vary_names(buf: &[u8], fields: &Fields) -> Option<Vec<u8>> {
    let mut names = Vec::new();
    let mut count = 0;
    for name in values(buf, fields, b"vary").flat_map(list_tokens) {
        count += 1;
        if name == b"*" || count > MAX_VARY_NAMES {
            return None;
        }
        if !names.is_empty() {
            names.push(b',');
        }
        let start = names.len();
        names.extend_from_slice(name);
        if let Some(added) = names.get_mut(start..) {
            added.make_ascii_lowercase();
        }
    }
    Some(names)
}

/// RFC 9110 §13.1.2–3 for a fresh stored response: `If-None-Match` (weak comparison, `*`
/// matches any stored response) decides when present; otherwise `If-Modified-Since` matches
/// when the response was last modified at or before it.
pub(super) fn not_modified(
    buf: &[u8],
    fields: &Fields,
    etag: &[u8],
    modified: Option<i64>,
) -> bool {
    let mut if_none_match = values(buf, fields, b"if-none-match").peekable();
    if if_none_match.peek().is_some() {
        return if_none_match.any(|list| etag_listed(list, etag));
    }
    let since = fields.get(buf, b"if-modified-since").and_then(date::parse);
    since
        .zip(modified)
        .is_some_and(|(since, modified)| modified <= since)
}

/// Whether the If-None-Match `list` matches `etag` by weak comparison (RFC 9110 §8.8.3.2:
/// the opaque tags are equal, whether or not either is marked `W/`).
fn etag_listed(list: &[u8], etag: &[u8]) -> bool {
    if list == b"*" {
        return true;
    }
    let ours = opaque(etag);
    if ours.is_empty() {
        return false;
    }
    // Entity tags may hold commas, so the list is walked tag by tag, not split on commas.
    let mut rest = list;
    loop {
        rest = trim_start(rest, |b| matches!(b, b' ' | b'\t' | b','));
        if rest.is_empty() {
            return false;
        }
        let tag = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(after_quote) = tag.strip_prefix(b"\"") else {
            // Not an entity tag: nothing after it can be read reliably.
            return false;
        };
        let Some(close) = after_quote.iter().position(|&b| b == b'"') else {
            return false;
        };
        if tag.get(..close + 2) == Some(ours) {
            return true;
        }
        rest = tag.get(close + 2..).unwrap_or_default();
    }
}

/// An entity tag without its weakness mark.
fn opaque(etag: &[u8]) -> &[u8] {
    etag.strip_prefix(b"W/").unwrap_or(etag)
}

fn trim_start(mut s: &[u8], skip: impl Fn(u8) -> bool) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !skip(*first) {
            break;
        }
        s = rest;
    }
    s
}

/// The values of every field named `name` (lowercase), in order.
fn values<'b>(
    buf: &'b [u8],
    fields: &'b Fields,
    name: &'static [u8],
) -> impl Iterator<Item = &'b [u8]> {
    fields
        .headers
        .iter()
        .filter(move |h| h.name.of(buf).eq_ignore_ascii_case(name))
        .map(move |h| h.value.of(buf))
}

/// `delta-seconds` (RFC 9111 §1.2.2): digits only, capped at 2^31.
fn delta_seconds(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| (n * 10 + u64::from(d - b'0')).min(DELTA_SECONDS_MAX))
    })
}

/// The directives of one Cache-Control value: `name` or `name=token` or `name="quoted"`,
/// comma-separated (RFC 9111 §5.2). Yields the name and the argument (unquoted; empty if
/// none). A quoted argument may hold commas, so the value is walked rather than split.
struct Directives<'a>(&'a [u8]);

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = trim_start(self.0, |b| matches!(b, b' ' | b'\t' | b','));
        if rest.is_empty() {
            self.0 = rest;
            return None;
        }
        let name_len = rest
            .iter()
            .position(|&b| matches!(b, b'=' | b',' | b' ' | b'\t'))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_len);
        let after = trim_start(after, |b| matches!(b, b' ' | b'\t'));
        let (arg, after) = match after.strip_prefix(b"=") {
            None => (&b""[..], after),
            Some(value) => {
                let value = trim_start(value, |b| matches!(b, b' ' | b'\t'));
                match value.strip_prefix(b"\"") {
                    Some(quoted) => {
                        let end = closing_quote(quoted);
                        let (arg, tail) = quoted.split_at(end);
                        (arg, tail.get(1..).unwrap_or_default())
                    }
                    None => {
                        let end = value.iter().position(|&b| b == b',').unwrap_or(value.len());
                        let (arg, tail) = value.split_at(end);
                        (trim_end_ows(arg), tail)
                    }
                }
            }
        };
        // Whatever else the element holds (malformed input) runs to the next comma.
        let skip = after.iter().position(|&b| b == b',').unwrap_or(after.len());
        self.0 = after.get(skip..).unwrap_or_default();
        Some((name, arg))
    }
}

/// Index of the quote that ends a quoted-string body (`\` escapes the next byte), or its
/// length if unterminated.
fn closing_quote(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => return i,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    s.len()
}

fn trim_end_ows(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
