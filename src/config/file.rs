//! The config file as written: serde structs that mirror the TOML key for key, with unknown keys
//! rejected. Values that validation must check keep their byte span (`Spanned`) so its errors can
//! point at them; values whose type alone says everything are plain.
//!
//! Tables are never `Spanned` here: toml gives no span to a table that is only implied (the
//! `upstreams` in `[upstreams.api]`, or `respond` in `respond.status = 200`), and a `Spanned`
//! one would then fail to deserialize. Routes are array elements, which always have one.
//!
//! toml reports its own errors (syntax, unknown keys, wrong types) by byte offset only; this
//! module also turns such an offset into the key path it belongs to ([`KeyIndex`]).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::{Spanned, Value};

use super::{Builtin, ConfigError, Driver, LogFormat, Steer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// Optional only so that its absence gets our message rather than serde's.
    pub(crate) server: Option<ServerFile>,
    pub(crate) admin: Option<AdminFile>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<Spanned<String>, UpstreamFile>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub(crate) rate_limits: BTreeMap<Spanned<String>, RateLimitFile>,
    pub(crate) cache: Option<CacheFile>,
    pub(crate) log: Option<LogFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFile {
    pub(crate) access: Option<Spanned<String>>,
    pub(crate) format: Option<LogFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheFile {
    pub(crate) memory: Option<Spanned<Value>>,
    pub(crate) max_object: Option<Spanned<Value>>,
    #[serde(default)]
    pub(crate) purge_allow: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitFile {
    pub(crate) key: Spanned<String>,
    pub(crate) rate: Spanned<String>,
    pub(crate) burst: Spanned<i64>,
    pub(crate) max_keys: Option<Spanned<i64>>,
    pub(crate) headers: Option<bool>,
}

/// Durations and sizes are `Value`s so that a bare number gets a message saying which unit to
/// add, instead of serde's "expected a string".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    /// Each item is `"IP:port"` or `{ addr = "IP:port", tls = true }`; a `Value` so that both
    /// shapes get our messages (an untagged enum would lose the spans).
    pub(crate) listen: Spanned<Vec<Spanned<Value>>>,
    pub(crate) workers: Option<Spanned<Value>>,
    pub(crate) pin: Option<bool>,
    pub(crate) driver: Option<Driver>,
    pub(crate) drain_timeout: Option<Spanned<Value>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) header_timeout: Option<Spanned<Value>>,
    pub(crate) keepalive_timeout: Option<Spanned<Value>>,
    pub(crate) max_body: Option<Spanned<Value>>,
    pub(crate) max_request_line: Option<Spanned<Value>>,
    pub(crate) max_head: Option<Spanned<Value>>,
    pub(crate) max_headers: Option<Spanned<i64>>,
    pub(crate) steer: Option<Steer>,
    /// Address blocks that may connect at all (empty: any).
    #[serde(default)]
    pub(crate) ip_allow: Vec<Spanned<String>>,
    /// Address blocks refused before anything else.
    #[serde(default)]
    pub(crate) ip_deny: Vec<Spanned<String>>,
    /// `[[server.tls]]`: certificates for the TLS listeners.
    #[serde(default)]
    pub(crate) tls: Vec<Spanned<TlsFile>>,
}

/// One `[[server.tls]]` entry: a PEM certificate chain, its PEM key, and the SNI names it is
/// served for (none: the default certificate).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
    pub(crate) server_names: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub(crate) listen: Spanned<String>,
}

/// Targets are `Value`s: each is `"IP:port"` or `{ addr = "IP:port", weight = N }`, and
/// validation says which of the two a wrong one should have been.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    pub(crate) targets: Option<Spanned<Vec<Spanned<Value>>>>,
    pub(crate) builtin: Option<Spanned<Builtin>>,
    pub(crate) balance: Option<Spanned<String>>,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) connect_timeout: Option<Spanned<Value>>,
    pub(crate) read_timeout: Option<Spanned<Value>>,
    pub(crate) idle_timeout: Option<Spanned<Value>>,
    pub(crate) max_idle: Option<Spanned<i64>>,
    pub(crate) max_requests: Option<Spanned<i64>>,
    pub(crate) timeout: Option<Spanned<Value>>,
    pub(crate) health: Option<HealthFile>,
    pub(crate) outlier: Option<OutlierFile>,
    pub(crate) breaker: Option<BreakerFile>,
    pub(crate) retries: Option<RetriesFile>,
    /// `tls = { ca = "PATH", server_name = "NAME" }`, or `tls = true` (which is refused with a
    /// message: there are no system roots to verify against).
    pub(crate) tls: Option<Spanned<UpstreamTlsFile>>,
}

/// `upstreams.NAME.tls`: a flag or a table.
#[derive(Debug)]
pub(crate) enum UpstreamTlsFile {
    Flag(bool),
    Table(UpstreamTlsTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsTable {
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) server_name: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for UpstreamTlsFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<UpstreamTlsFile, D::Error> {
        struct TlsVisitor;
        impl<'de> Visitor<'de> for TlsVisitor {
            type Value = UpstreamTlsFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`{ ca = \"PATH\", server_name = \"NAME\" }` or a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<UpstreamTlsFile, E> {
                Ok(UpstreamTlsFile::Flag(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpstreamTlsFile, A::Error> {
                UpstreamTlsTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(UpstreamTlsFile::Table)
            }
        }
        deserializer.deserialize_any(TlsVisitor)
    }
}

/// `health = { path, interval, timeout, healthy, unhealthy, expect_status }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) interval: Option<Spanned<Value>>,
    pub(crate) timeout: Option<Spanned<Value>>,
    pub(crate) healthy: Option<Spanned<i64>>,
    pub(crate) unhealthy: Option<Spanned<i64>>,
    pub(crate) expect_status: Option<Spanned<Value>>,
}

/// `outlier = { consecutive_failures, base_ejection, max_ejection, max_ejected_percent }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutlierFile {
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) base_ejection: Option<Spanned<Value>>,
    pub(crate) max_ejection: Option<Spanned<Value>>,
    pub(crate) max_ejected_percent: Option<Spanned<i64>>,
}

/// `breaker = { max_connections, max_pending, max_requests }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerFile {
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_pending: Option<Spanned<i64>>,
    pub(crate) max_requests: Option<Spanned<i64>>,
}

/// `retries = { attempts, on, budget, min_retries, per_try_timeout }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetriesFile {
    pub(crate) attempts: Option<Spanned<i64>>,
    pub(crate) on: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) budget: Option<Spanned<String>>,
    pub(crate) min_retries: Option<Spanned<i64>>,
    pub(crate) per_try_timeout: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Spanned<String>,
    pub(crate) methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) upstream: Option<Spanned<String>>,
    pub(crate) strip_prefix: Option<Spanned<bool>>,
    pub(crate) host_rewrite: Option<Spanned<String>>,
    pub(crate) respond: Option<RespondFile>,
    pub(crate) rate_limit: Option<Spanned<String>>,
    /// `true`, `false` or `{ ttl = "60s" }`.
    pub(crate) cache: Option<Spanned<Value>>,
    pub(crate) ip: Option<IpFile>,
    pub(crate) cors: Option<CorsFile>,
    pub(crate) auth: Option<AuthFile>,
    pub(crate) request_headers: Option<HeadersFile>,
    pub(crate) response_headers: Option<HeadersFile>,
}

/// `ip = { allow = [...], deny = [...] }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpFile {
    #[serde(default)]
    pub(crate) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) deny: Vec<Spanned<String>>,
}

/// `cors = { origins = [...], ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsFile {
    pub(crate) origins: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) expose_headers: Vec<Spanned<String>>,
    pub(crate) max_age: Option<Spanned<Value>>,
    pub(crate) credentials: Option<Spanned<bool>>,
}

/// `auth = { api_keys = PATH, header, forward_as }` or `auth = { jwt = { ... } }` (also written
/// as a `[routes.auth.jwt]` table).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    pub(crate) api_keys: Option<Spanned<String>>,
    pub(crate) header: Option<Spanned<String>>,
    pub(crate) forward_as: Option<Spanned<String>>,
    pub(crate) jwt: Option<JwtFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtFile {
    pub(crate) algorithms: Spanned<Vec<Spanned<String>>>,
    pub(crate) secret_file: Option<Spanned<String>>,
    pub(crate) public_key_file: Option<Spanned<String>>,
    pub(crate) jwks_file: Option<Spanned<String>>,
    pub(crate) issuer: Option<Spanned<String>>,
    pub(crate) audience: Option<Spanned<String>>,
    pub(crate) leeway: Option<Spanned<Value>>,
    #[serde(default)]
    pub(crate) required_scopes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) claims_to_headers: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// `request_headers` / `response_headers = { set = { NAME = VALUE }, remove = [NAME] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeadersFile {
    #[serde(default)]
    pub(crate) set: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub(crate) remove: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RespondFile {
    pub(crate) status: Spanned<i64>,
    #[serde(default)]
    pub(crate) body: String,
    #[serde(default)]
    pub(crate) headers: BTreeMap<Spanned<String>, Spanned<String>>,
}

impl File {
    /// Deserializes `text`, turning toml's errors into [`ConfigError::Invalid`] with a position
    /// and, when the text is valid TOML, the key path the error is at.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<File, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            // A syntax error leaves no document to name keys in; the key stays empty.
            let key = KeyIndex::build(text)
                .and_then(|index| index.key_at(text, offset))
                .unwrap_or_default();
            // toml's messages may span lines ("invalid table header\nexpected `.`, `]`").
            let message = err.message().trim().replace('\n', "; ");
            invalid(text, origin, offset, key, message)
        })
    }
}

/// The error for `offset` in `text`, with its 1-based line and column.
pub(crate) fn invalid(
    text: &str,
    origin: &str,
    offset: usize,
    key: String,
    message: String,
) -> ConfigError {
    let (line, column) = position(text, offset);
    ConfigError::Invalid {
        origin: origin.to_string(),
        line,
        column,
        key,
        message,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(crate) fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Appends one key to a dotted path, quoting it when it is not a bare TOML key.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        path.push_str(key);
    } else {
        // `{:?}` escapes like a TOML basic string for everything a key plausibly holds.
        let _ = write!(path, "{key:?}");
    }
}

/// Where each key and array element of a document starts, with its key path.
///
/// toml gives an error's byte span but not its key path, and cannot give spans of implied
/// tables (see the module docs), so the index records what always has a span: every key, and
/// every array element. An error then belongs to the closest of those at or before it, which is
/// the key a value or an inline table belongs to, or the unknown key itself, or the array
/// element (e.g. a `[[routes]]` table) that is missing a field. An error that points at a
/// `[table]` header (a missing field) belongs to the keys in that header.
struct KeyIndex {
    /// (start offset, key path), in no particular order.
    anchors: Vec<(usize, String)>,
}

impl KeyIndex {
    /// `None` when `text` is not TOML.
    fn build(text: &str) -> Option<KeyIndex> {
        let root: Node = toml::from_str(text).ok()?;
        let mut index = KeyIndex {
            anchors: Vec::new(),
        };
        index.walk(&root, &mut String::new());
        Some(index)
    }

    fn walk(&mut self, node: &Node, path: &mut String) {
        let len = path.len();
        match node {
            Node::Table(entries) => {
                for (key, value) in entries {
                    push_key(path, key.get_ref());
                    self.anchors.push((key.span().start, path.clone()));
                    self.walk(value, path);
                    path.truncate(len);
                }
            }
            Node::Array(elements) => {
                for (i, element) in elements.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    self.anchors.push((element.span().start, path.clone()));
                    self.walk(element.get_ref(), path);
                    path.truncate(len);
                }
            }
            Node::Scalar => {}
        }
    }

    /// The key path that the error at byte `offset` belongs to.
    fn key_at(&self, text: &str, offset: usize) -> Option<String> {
        if let Some(header) = header_at(text, offset) {
            // The most specific key written in the header: `api` in `[upstreams.api]`, the
            // element in `[[routes]]`.
            let in_header = self
                .anchors
                .iter()
                .filter(|(start, _)| header.contains(start))
                .max_by_key(|(_, path)| path.len());
            if let Some((_, path)) = in_header {
                return Some(path.clone());
            }
        }
        // The closest anchor at or before the error; on a tie the longer path is more precise.
        self.anchors
            .iter()
            .filter(|(start, _)| *start <= offset)
            .max_by_key(|(start, path)| (*start, path.len()))
            .map(|(_, path)| path.clone())
    }
}

/// The byte range of the `[table]` or `[[array]]` header line that starts at `offset`, if one
/// does: a '[' with only whitespace before it on its line.
fn header_at(text: &str, offset: usize) -> Option<Range<usize>> {
    let before = text.get(..offset)?;
    let rest = text.get(offset..)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let indent_only = before[line_start..].chars().all(|c| c == ' ' || c == '\t');
    (indent_only && rest.starts_with('['))
        .then(|| offset..offset + rest.find('\n').unwrap_or(rest.len()))
}

/// Any TOML value, reduced to what [`KeyIndex`] needs: table keys and array elements with
/// their spans.
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Node::Array(elements))
    }

    // Datetimes also arrive as a map, with a key that has no span; a document holding one gets
    // no index, and its errors no key path.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}
