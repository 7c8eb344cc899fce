//! Differential property test: thousands of generated request heads, valid and broken, parsed
//! by ringgate and by httparse; `common::oracle::check` states what must agree.

#[path = "common/oracle.rs"]
mod oracle;

use proptest::prelude::*;
use proptest::sample::select;

const METHODS: &[&str] = &[
    "GET", "POST", "HEAD", "OPTIONS", "CONNECT", "PATCH", "M-SEARCH", "G(T", "",
];
const TARGETS: &[&str] = &[
    "/",
    "/v1/users?id=7&x=%20",
    "*",
    "a.example:443",
    "http://a.example:8080/p?q",
    "https://a.example",
    "http://u@a.example/",
    "//double",
    "/caf\u{e9}",
    "/a b",
    "ftp:/x",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "http/1.1",
];
const NAMES: &[&str] = &[
    "Host",
    "host",
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Upgrade",
    "Expect",
    "X-Forwarded-For",
    "Accept",
    "Cookie",
    "X-Custom",
    "X Bad",
    "X(",
    "",
];
const VALUES: &[&str] = &[
    "a.example",
    "a.example:8080",
    "[::1]:80",
    "5",
    "0",
    "5, 5",
    "5, 6",
    "-1",
    "99999999999999999999",
    "chunked",
    "gzip, chunked",
    "chunked, gzip",
    "foo, chunked",
    "close",
    "keep-alive",
    "Upgrade, X-Custom",
    "100-continue",
    "websocket",
    "  padded \t ",
    "a\tb",
    "caf\u{e9}",
    "",
    "a b@c",
];
const ENDINGS: &[&str] = &["\r\n", "\r\n", "\r\n", "\r\n", "\n", " \r\n", "\r"];

fn header() -> impl Strategy<Value = String> {
    (
        select(NAMES),
        select(&[": ", ":", " : ", ":\t"][..]),
        select(VALUES),
        select(ENDINGS),
    )
        .prop_map(|(n, sep, v, end)| format!("{n}{sep}{v}{end}"))
}

/// A head from the grammar above, then up to three random byte edits and maybe a truncation.
fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        select(&["", "\r\n", "\n"][..]),
        select(METHODS),
        select(TARGETS),
        select(VERSIONS),
        select(ENDINGS),
        prop::collection::vec(header(), 0..8),
        select(&["\r\n", "\r\n", "\n", ""][..]),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(lead, m, t, v, eol, headers, last, edits, cut)| {
            let mut raw = format!("{lead}{m} {t} {v}{eol}{}{last}", headers.concat()).into_bytes();
            for (at, byte, op) in edits {
                let i = at.index(raw.len() + 1);
                match op {
                    0 => raw.insert(i, byte),
                    1 if i < raw.len() => raw[i] = byte,
                    _ if i < raw.len() => {
                        raw.remove(i);
                    }
                    _ => {}
                }
            }
            if let Some(cut) = cut {
                raw.truncate(cut.index(raw.len() + 1));
            }
            raw
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ours_and_httparse_agree_up_to_strict_rules(raw in head()) {
        oracle::check(&raw);
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        oracle::check(&raw);
    }
}

#[test]
fn the_oracle_sees_a_disagreement() {
    // The check is only worth something if it can fail: a head where httparse accepts and we
    // reject for a reason the input does not have would panic. Missing Host is explained...
    oracle::check(b"GET / HTTP/1.1\r\nX: y\r\n\r\n");
    // ...and a bare LF in an otherwise valid head is explained too.
    oracle::check(b"GET / HTTP/1.1\nHost: a\n\n");
    let unexplained = std::panic::catch_unwind(|| {
        oracle::assert_explained(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            ringgate::http::ParseError::ObsFold,
        )
    });
    assert!(
        unexplained.is_err(),
        "an error the input does not explain must fail the check"
    );
}
