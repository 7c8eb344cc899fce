//! API keys: the key file's format, the hash operators put in it, and the lookup of a presented
//! key.
//!
//! The file holds one `name:sha256hex` per line (`#` starts a comment line; blank lines are
//! skipped), so a leaked file does not leak keys. [`hash_key`] makes the hex that goes in it
//! (`ringgate hash-key`). A lookup hashes the presented key once and compares the digest with
//! every stored hash in constant time, without stopping at a match, so its timing says neither
//! which entry matched nor how much of a stored hash a guess got right. The cost is one SHA-256
//! plus a 32-byte comparison per stored key, which stays below a microsecond for hundreds of
//! keys.
//!
//! Loading happens with the config (a reload re-reads the file); nothing here runs I/O on the
//! request path.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{write_header, Denial, Reason, Verdict};
use crate::http::chars::is_tchar;
use crate::http::encode::hex_pair;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        /// 1-based.
        line: usize,
        message: String,
    },
}

/// Lowercase hex of the SHA-256 of `key`: what a key file stores for it.
pub fn hash_key(key: &str) -> String {
    let digest = digest(&SHA256, key.as_bytes());
    let mut hex = String::with_capacity(64);
    for &b in digest.as_ref() {
        hex.extend(hex_pair(b).map(char::from));
    }
    hex
}

fn unhex(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let &[hi, lo] = pair else {
            return None;
        };
        *o = unhex(hi)? << 4 | unhex(lo)?;
    }
    Some(out)
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    name: Box<str>,
    hash: [u8; 32],
}

/// The keys of one key file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    entries: Vec<Entry>,
}

/// Shows the count only: hashes of keys stay out of logs.
impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySet({} keys)", self.entries.len())
    }
}

impl KeySet {
    /// Reads and parses the key file at `path`.
    pub fn load(path: &Path) -> Result<KeySet, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        KeySet::parse(&text, path)
    }

    /// Parses key-file text; `path` only names the file in errors. An empty file is a valid set
    /// that refuses every key (emptying the file revokes everyone).
    pub fn parse(text: &str, path: &Path) -> Result<KeySet, KeyFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fail = |message: String| KeyFileError::Line {
                path: path.to_path_buf(),
                line,
                message,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, hex)) = trimmed.split_once(':') else {
                return Err(fail(
                    "expected `name:sha256hex` (make the hash with `ringgate hash-key`)".into(),
                ));
            };
            let (name, hex) = (name.trim(), hex.trim());
            // The name is forwarded upstream as a header value: keep it a plain token.
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(fail(format!(
                    "key name `{name}` must be a non-empty token (letters, digits, -._ and the like)"
                )));
            }
            let Some(hash) = parse_hash(hex) else {
                return Err(fail(format!(
                    "`{hex}` is not a SHA-256 in hex (64 hex digits; `ringgate hash-key` makes one)"
                )));
            };
            if let Some(j) = entries.iter().position(|e| e.hash == hash) {
                let earlier = lines_of.get(j).copied().unwrap_or(0);
                return Err(fail(format!(
                    "the same key is listed on line {earlier}; one key must not have two names"
                )));
            }
            entries.push(Entry {
                name: name.into(),
                hash,
            });
            lines_of.push(line);
        }
        Ok(KeySet { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name of the key `presented`, if it is one of the set's keys.
    pub fn lookup(&self, presented: &[u8]) -> Option<&str> {
        let digest = digest(&SHA256, presented);
        let digest = digest.as_ref();
        // Every entry is compared, and the match is carried in a constant-time select, so no
        // branch depends on key material.
        let mut found = u32::MAX;
        for (i, entry) in self.entries.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&index, entry.hash.as_slice().ct_eq(digest));
        }
        self.entries
            .get(usize::try_from(found).ok()?)
            .map(|e| &*e.name)
    }
}

/// `auth = { api_keys = PATH, header = ..., forward_as = ... }` on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    /// The key file, as resolved at load (relative paths against the config's directory).
    pub file: PathBuf,
    /// The request header holding the key; `X-API-Key` unless configured.
    pub header: String,
    /// The request header that carries the key's name upstream, if any.
    pub forward_as: Option<String>,
    pub keys: KeySet,
    /// `ApiKey header="X-API-Key"`: the WWW-Authenticate value on a 401 (RFC 9110 §11.6.1
    /// wants a challenge on every 401, and this one says where the key goes).
    challenge: String,
}

/// The default key header.
pub const DEFAULT_HEADER: &str = "X-API-Key";

impl ApiKeyAuth {
    pub fn new(file: PathBuf, header: String, forward_as: Option<String>, keys: KeySet) -> Self {
        let challenge = format!("ApiKey header=\"{header}\"");
        ApiKeyAuth {
            file,
            header,
            forward_as,
            keys,
            challenge,
        }
    }

    /// Checks the value of the key header (`None` when absent). On success writes the
    /// `forward_as` header with the key's name to `forward`.
    pub fn check(&self, presented: Option<&[u8]>, forward: &mut Vec<u8>) -> Verdict<'_> {
        let Some(presented) = presented.filter(|k| !k.is_empty()) else {
            return Verdict::Deny(Denial::unauthorized(Reason::Missing, &self.challenge));
        };
        match self.keys.lookup(presented) {
            Some(name) => {
                if let Some(header) = &self.forward_as {
                    write_header(forward, header.as_bytes(), name.as_bytes());
                }
                Verdict::Allow
            }
            None => Verdict::Deny(Denial::unauthorized(Reason::UnknownKey, &self.challenge)),
        }
    }

    /// Whether a client's request header named `name` must not reach the upstream: the key
    /// itself, and anything posing as the forwarded name.
    pub fn strips(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(self.header.as_bytes())
            || self
                .forward_as
                .as_ref()
                .is_some_and(|f| name.eq_ignore_ascii_case(f.as_bytes()))
    }
}

/// The file, header names and key count; never the hashes.
impl Serialize for ApiKeyAuth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ApiKeyAuth", 4)?;
        s.serialize_field("file", &self.file)?;
        s.serialize_field("header", &self.header)?;
        s.serialize_field("forward_as", &self.forward_as)?;
        s.serialize_field("keys", &self.keys.len())?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> KeySet {
        KeySet::parse(text, Path::new("k.keys")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn line_error(text: &str) -> (usize, String) {
        match KeySet::parse(text, Path::new("k.keys")) {
            Err(KeyFileError::Line { line, message, .. }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn hash_is_lowercase_sha256_hex() {
        // `printf abc | sha256sum`
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hash_key("").len(), 64);
    }

    #[test]
    fn parses_names_hashes_comments_and_blank_lines() {
        let set = keys(&format!(
            "# demo keys\n\n  alice : {}\nbob:{}\n   # indented comment\n",
            hash_key("alice-secret"),
            hash_key("bob-secret").to_ascii_uppercase()
        ));
        assert_eq!(set.len(), 2);
        assert_eq!(set.lookup(b"alice-secret"), Some("alice"));
        assert_eq!(set.lookup(b"bob-secret"), Some("bob"));
        assert_eq!(format!("{set:?}"), "KeySet(2 keys)");
        assert!(keys("# nobody\n").is_empty());
    }

    #[test]
    fn wrong_missing_and_near_keys_are_refused() {
        let set = keys(&format!("alice:{}\n", hash_key("alice-secret")));
        assert_eq!(set.lookup(b"alice-secreT"), None);
        assert_eq!(set.lookup(b"alice-secret "), None);
        assert_eq!(set.lookup(b""), None);
        // The hash itself is not a key.
        assert_eq!(set.lookup(hash_key("alice-secret").as_bytes()), None);
        assert_eq!(KeySet::default().lookup(b"alice-secret"), None);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let good = hash_key("k");
        let (line, message) = line_error(&format!("a:{good}\n\nno-colon-here\n"));
        assert_eq!(line, 3);
        assert!(message.contains("name:sha256hex"), "{message}");
        let (line, message) = line_error(&format!("# c\nb:{}\n", &good[..63]));
        assert_eq!(line, 2);
        assert!(message.contains("64 hex digits"), "{message}");
        let (line, _) = line_error(&format!("b:{}g\n", &good[..63]));
        assert_eq!(line, 1);
        let (line, message) = line_error(&format!(":{good}\n"));
        assert_eq!(line, 1);
        assert!(message.contains("token"), "{message}");
        let (_, message) = line_error(&format!("two words:{good}\n"));
        assert!(message.contains("token"), "{message}");
        let (line, message) = line_error(&format!("a:{good}\nb:{good}\n"));
        assert_eq!(line, 2);
        assert!(message.contains("line 1"), "{message}");
        let shown = KeySet::parse("x", Path::new("/etc/ringgate/k.keys"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(shown.starts_with("/etc/ringgate/k.keys:1: "), "{shown}");
    }

    #[test]
    fn load_reports_the_file() {
        let err = KeySet::load(Path::new("/nonexistent/ringgate.keys"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("cannot read /nonexistent/ringgate.keys"),
            "{err}"
        );
    }

    #[test]
    fn check_forwards_the_name_and_challenges_otherwise() {
        let auth = ApiKeyAuth::new(
            PathBuf::from("k.keys"),
            DEFAULT_HEADER.into(),
            Some("X-Api-Key-Name".into()),
            keys(&format!("alice:{}\n", hash_key("s3cret"))),
        );
        let mut forward = Vec::new();
        assert_eq!(auth.check(Some(b"s3cret"), &mut forward), Verdict::Allow);
        assert_eq!(forward, b"X-Api-Key-Name: alice\r\n");

        forward.clear();
        for (presented, reason) in [
            (None, Reason::Missing),
            (Some(&b""[..]), Reason::Missing),
            (Some(b"wrong"), Reason::UnknownKey),
        ] {
            match auth.check(presented, &mut forward) {
                Verdict::Deny(denial) => {
                    assert_eq!((denial.status, denial.reason), (401, reason));
                    let mut out = Vec::new();
                    denial.write_headers(&mut out);
                    assert_eq!(out, b"WWW-Authenticate: ApiKey header=\"X-API-Key\"\r\n");
                }
                Verdict::Allow => panic!("{presented:?} allowed"),
            }
        }
        assert!(forward.is_empty());

        assert!(auth.strips(b"x-api-key"));
        assert!(auth.strips(b"X-API-KEY-NAME"));
        assert!(!auth.strips(b"authorization"));
    }

    #[test]
    fn serialization_hides_the_hashes() {
        let auth = ApiKeyAuth::new(
            PathBuf::from("/etc/ringgate/k.keys"),
            DEFAULT_HEADER.into(),
            None,
            keys(&format!("alice:{}\n", hash_key("s3cret"))),
        );
        let json = serde_json::to_string(&auth).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"file":"/etc/ringgate/k.keys","header":"X-API-Key","forward_as":null,"keys":1}"#
        );
        assert!(!json.contains(&hash_key("s3cret")));
    }
}
