//! The response cache end to end: what the client sees (X-Cache, Age, 304s), and how many
//! requests the upstream actually got.

#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Mutex};

use gateway::{exchange, read_response, Gateway, Upstream, PATIENCE};

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
workers = 1
pin = false

[cache]
memory = "8MiB"
max_object = "64KiB"
purge_allow = ["127.0.0.1/32"]

[upstreams.backend]
targets = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "backend"
cache = {{ ttl = "60s" }}
"#
    )
}

/// An upstream whose response for a path is chosen by its first segment.
fn upstream() -> Upstream {
    Upstream::spawn(|seen, s| {
        let path = seen.head.split(' ').nth(1).unwrap_or("/").to_owned();
        let (fields, body) = if path.starts_with("/fresh") {
            (
                "Cache-Control: max-age=60\r\nETag: \"v1\"\r\n".to_owned(),
                format!("body of {path}"),
            )
        } else if path.starts_with("/nostore") {
            (
                "Cache-Control: no-store\r\n".to_owned(),
                "private".to_owned(),
            )
        } else if path.starts_with("/cookie") {
            (
                "Cache-Control: max-age=60\r\nSet-Cookie: a=b\r\n".to_owned(),
                "cookie".to_owned(),
            )
        } else if path.starts_with("/vary") {
            let enc = seen.header("accept-encoding").unwrap_or("none").to_owned();
            (
                "Cache-Control: max-age=60\r\nVary: Accept-Encoding\r\n".to_owned(),
                format!("for {enc}"),
            )
        } else {
            (String::new(), "default ttl".to_owned())
        };
        let r = format!(
            "HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(r.as_bytes()).is_ok()
    })
}

fn get(gw: &Gateway, path: &str, extra: &str) -> (u16, String, String) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
    let (status, head, body) = exchange(gw, raw.as_bytes());
    (status, head, String::from_utf8(body).unwrap())
}

#[test]
fn miss_then_hit_and_what_is_not_stored() {
    let up = upstream();
    let gw = Gateway::start(&config(up.addr));
    let (status, head, body) = get(&gw, "/fresh/1", "");
    assert_eq!((status, body.as_str()), (200, "body of /fresh/1"));
    assert!(head.contains("X-Cache: MISS"), "{head}");
    let (status, head, body) = get(&gw, "/fresh/1", "");
    assert_eq!((status, body.as_str()), (200, "body of /fresh/1"));
    assert!(
        head.contains("X-Cache: HIT") && head.contains("Age: 0"),
        "{head}"
    );
    assert!(head.contains("ETag: \"v1\""), "{head}");
    // A route TTL applies to a cacheable response that gives no lifetime.
    get(&gw, "/plain", "");
    let (_, head, _) = get(&gw, "/plain", "");
    assert!(head.contains("X-Cache: HIT"), "{head}");
    assert_eq!(up.requests().len(), 2, "one upstream request per URL");

    for path in ["/nostore", "/cookie"] {
        get(&gw, path, "");
        let (_, head, _) = get(&gw, path, "");
        assert!(
            head.contains("X-Cache: MISS"),
            "{path} is not stored: {head}"
        );
    }
    assert_eq!(up.requests().len(), 6);
}

#[test]
fn vary_splits_entries_and_etags_give_304() {
    let up = upstream();
    let gw = Gateway::start(&config(up.addr));
    for enc in ["gzip", "br", "gzip", "br"] {
        let (_, _, body) = get(&gw, "/vary", &format!("Accept-Encoding: {enc}\r\n"));
        assert_eq!(body, format!("for {enc}"));
    }
    assert_eq!(up.requests().len(), 2, "one fetch per variant");

    get(&gw, "/fresh/etag", "");
    let (status, head, body) = get(&gw, "/fresh/etag", "If-None-Match: \"v1\"\r\n");
    assert_eq!((status, body.as_str()), (304, ""), "{head}");
    assert!(head.contains("X-Cache: HIT"), "{head}");
    assert_eq!(up.requests().len(), 3);
}

#[test]
fn purge_is_allowed_from_the_listed_addresses() {
    let up = upstream();
    let gw = Gateway::start(&config(up.addr));
    get(&gw, "/fresh/p", "");
    let raw = b"PURGE /fresh/p HTTP/1.1\r\nHost: a\r\n\r\n";
    let (status, _, body) = exchange(&gw, raw);
    assert_eq!((status, body.as_slice()), (200, &b"purged 1\n"[..]));
    let (_, head, _) = get(&gw, "/fresh/p", "");
    assert!(head.contains("X-Cache: MISS"), "{head}");
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn concurrent_misses_share_one_upstream_fetch() {
    let (release, held) = mpsc::channel::<()>();
    let held = Mutex::new(held);
    let up = Upstream::spawn(move |_, s| {
        // The first fetch waits until every client has sent its request.
        let _ = held.lock().unwrap().recv_timeout(PATIENCE);
        let body = "shared";
        let r = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(r.as_bytes()).is_ok()
    });
    let gw = Gateway::start(&config(up.addr));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let mut s = gw.connect();
            s.write_all(b"GET /hot HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    up.next_arrival();
    release.send(()).unwrap();
    for s in clients {
        let (status, _, body) = read_response(&mut BufReader::new(s));
        assert_eq!((status, body.as_slice()), (200, &b"shared"[..]));
    }
    assert_eq!(
        up.requests().len(),
        1,
        "50 concurrent misses, one upstream fetch"
    );
}
