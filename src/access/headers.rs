//! A route's header edits: `request_headers = { set = { ... }, remove = [...] }` on what goes
//! upstream, and the same shape as `response_headers` on what goes back to the client.
//!
//! Names are tokens and values hold no control characters, checked once at load, so an edit can
//! never split a head. Headers that frame the message or belong to one connection (Content-Length,
//! Transfer-Encoding, Connection and the other hop-by-hop fields, and on requests Host and the
//! forwarding fields the gateway writes itself) cannot be edited: the codec owns them, and an
//! edit there would desynchronise the gateway from its peers. `set` replaces: a header it names
//! is dropped from the message first, then written with the configured value. The `set` lines are
//! rendered once, so applying them is one copy.

use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};

use crate::http::chars::is_tchar;

/// Which message the edits apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// Why an edit was refused: `field` is `"set"` or `"remove"`, `name` the header at fault, and
/// `in_value` says whether its value (rather than its name) is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HeaderEditError {
    pub field: &'static str,
    pub name: String,
    pub in_value: bool,
    pub message: String,
}

/// Framing and connection fields, never editable (lowercase).
const CODEC_OWNED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Request fields the gateway itself writes or acts on (lowercase).
const REQUEST_OWNED: &[&str] = &[
    "host",
    "expect",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Whether a header (lowercase `name`) may be set or removed by configuration on `side`.
pub(crate) fn editable(side: Side, name: &str) -> bool {
    let owned =
        CODEC_OWNED.contains(&name) || (side == Side::Request && REQUEST_OWNED.contains(&name));
    !owned
}

/// Names whose configured values stay out of `/config`: credentials for the upstream are a
/// common reason to set a request header.
fn is_sensitive(lower: &str) -> bool {
    matches!(lower, "authorization" | "proxy-authorization" | "cookie")
        || ["token", "key", "secret", "password", "auth", "session"]
            .iter()
            .any(|word| lower.contains(word))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// (name as written, value), in config order.
    set: Vec<(String, String)>,
    /// Lowercase names to drop: the `remove` list and every `set` name.
    drop: Vec<String>,
    /// The `remove` list as written, for `/config`.
    remove: Vec<String>,
    /// The `set` headers as `Name: value\r\n` lines.
    lines: Box<[u8]>,
}

impl HeaderEdits {
    pub fn new(
        side: Side,
        set: Vec<(String, String)>,
        remove: Vec<String>,
    ) -> Result<HeaderEdits, HeaderEditError> {
        let mut drop: Vec<String> = Vec::with_capacity(set.len() + remove.len());
        let mut lines = Vec::new();
        for (field, name) in remove
            .iter()
            .map(|n| ("remove", n))
            .chain(set.iter().map(|(n, _)| ("set", n)))
        {
            let fail = |message: String| HeaderEditError {
                field,
                name: name.clone(),
                in_value: false,
                message,
            };
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(fail(format!("`{name}` is not a header name")));
            }
            let lower = name.to_ascii_lowercase();
            if !editable(side, &lower) {
                return Err(fail(format!(
                    "`{name}` is managed by the gateway and cannot be edited"
                )));
            }
            if drop.contains(&lower) {
                return Err(fail(format!("`{name}` is listed twice")));
            }
            drop.push(lower);
        }
        for (name, value) in &set {
            // RFC 9110 §5.5: no CR, LF or other controls (they would split the head), and no
            // surrounding whitespace (it would not survive a round trip).
            let clean = value
                .bytes()
                .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                && value.trim_matches([' ', '\t']) == value;
            if !clean {
                return Err(HeaderEditError {
                    field: "set",
                    name: name.clone(),
                    in_value: true,
                    message: "must not hold control characters or leading or trailing whitespace"
                        .into(),
                });
            }
            super::write_header(&mut lines, name.as_bytes(), value.as_bytes());
        }
        Ok(HeaderEdits {
            set,
            drop,
            remove,
            lines: lines.into_boxed_slice(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.drop.is_empty()
    }

    /// Whether a header named `name` in the message must be left out: it is removed, or `set`
    /// replaces it.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.drop
            .iter()
            .any(|d| d.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Appends the `set` headers as `Name: value\r\n` lines.
    pub fn write_set(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lines);
    }
}

/// `{ "set": { name: value }, "remove": [...] }`, with sensitive values redacted.
impl Serialize for HeaderEdits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Set<'a>(&'a [(String, String)]);
        impl Serialize for Set<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (name, value) in self.0 {
                    if is_sensitive(&name.to_ascii_lowercase()) {
                        map.serialize_entry(name, "<redacted>")?;
                    } else {
                        map.serialize_entry(name, value)?;
                    }
                }
                map.end()
            }
        }
        let mut s = serializer.serialize_struct("HeaderEdits", 2)?;
        s.serialize_field("set", &Set(&self.set))?;
        s.serialize_field("remove", &self.remove)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_string()).collect()
    }

    #[test]
    fn set_replaces_and_remove_drops() {
        let edits = HeaderEdits::new(
            Side::Request,
            pairs(&[("X-Env", "prod"), ("X-Team", "a b\tc")]),
            names(&["X-Debug", "Cookie"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(edits.drops(b"x-debug"));
        assert!(edits.drops(b"COOKIE"));
        assert!(edits.drops(b"x-env"), "set replaces the client's value");
        assert!(!edits.drops(b"x-other"));
        let mut out = b"GET / HTTP/1.1\r\n".to_vec();
        edits.write_set(&mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\nX-Env: prod\r\nX-Team: a b\tc\r\n");
        assert!(HeaderEdits::default().is_empty());
        assert!(!edits.is_empty());
    }

    #[test]
    fn refuses_bad_names_values_and_codec_fields() {
        let refuse = |side, set: &[(&str, &str)], remove: &[&str]| {
            HeaderEdits::new(side, pairs(set), names(remove))
                .map(|_| ())
                .map_err(|e| (e.field, e.name))
        };
        let err = |field: &'static str, name: &str| Err((field, name.to_string()));
        assert_eq!(
            refuse(Side::Request, &[("X A", "v")], &[]),
            err("set", "X A")
        );
        assert_eq!(refuse(Side::Request, &[], &[""]), err("remove", ""));
        assert_eq!(
            refuse(Side::Request, &[("X-A", "v\r\nX-B: w")], &[]),
            err("set", "X-A")
        );
        assert_eq!(
            refuse(Side::Request, &[("X-A", "v\n")], &[]),
            err("set", "X-A")
        );
        assert_eq!(
            refuse(Side::Request, &[("X-A", " v")], &[]),
            err("set", "X-A")
        );
        assert_eq!(
            refuse(Side::Request, &[("X-A", "\u{7f}")], &[]),
            err("set", "X-A")
        );
        assert_eq!(
            refuse(Side::Response, &[], &["Content-Length"]),
            err("remove", "Content-Length")
        );
        assert_eq!(
            refuse(Side::Response, &[("Transfer-Encoding", "x")], &[]),
            err("set", "Transfer-Encoding")
        );
        assert_eq!(
            refuse(Side::Request, &[("Host", "x")], &[]),
            err("set", "Host")
        );
        assert_eq!(
            refuse(Side::Request, &[], &["X-Forwarded-For"]),
            err("remove", "X-Forwarded-For")
        );
        assert_eq!(
            refuse(Side::Response, &[("Host", "x")], &[]),
            Ok(()),
            "Host means nothing in a response"
        );
        assert_eq!(
            refuse(Side::Request, &[("X-A", "1")], &["x-a"]),
            err("set", "X-A")
        );
        assert_eq!(refuse(Side::Request, &[("X-A", "")], &[]), Ok(()));
    }

    #[test]
    fn serialization_redacts_credentials() {
        let edits = HeaderEdits::new(
            Side::Request,
            pairs(&[
                ("Authorization", "Bearer upstream"),
                ("X-Upstream-Token", "t"),
                ("X-Env", "prod"),
            ]),
            names(&["X-Debug"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&edits).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"set":{"Authorization":"<redacted>","X-Upstream-Token":"<redacted>","X-Env":"prod"},"remove":["X-Debug"]}"#
        );
    }
}
