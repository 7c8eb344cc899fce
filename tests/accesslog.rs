//! The access log: one JSON (or combined) line per exchange, written in batches, reopened on
//! SIGUSR1.

#[path = "common/gateway.rs"]
mod gateway;

use gateway::{exchange, Gateway, TempFile, Upstream};

fn config(upstream: std::net::SocketAddr, path: &std::path::Path, format: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
workers = 2
pin = false

[log]
access = "{}"
format = "{format}"

[upstreams.backend]
targets = ["{upstream}"]

[[routes]]
host = "api"
path_prefix = "/"
upstream = "backend"
"#,
        path.display()
    )
}

#[test]
fn json_lines_and_reopen_on_sigusr1() {
    let up = Upstream::ok("four");
    let log = TempFile::new("log", b"");
    let mut gw = Gateway::start(&config(up.addr, &log.path, "json"));
    for i in 0..10 {
        let raw =
            format!("GET /item/{i}?q=\"x\" HTTP/1.1\r\nHost: api\r\nX-Request-Id: req-{i}\r\n\r\n");
        assert_eq!(exchange(&gw, raw.as_bytes()).0, 200);
    }
    assert_eq!(
        exchange(&gw, b"GET / HTTP/1.1\r\nHost: elsewhere\r\n\r\n").0,
        404
    );
    // A head that cannot be parsed is refused, and logged too.
    assert_eq!(
        exchange(&gw, b"GET / HTTP/1.1\r\nHost: api\r\nNo colon here\r\n\r\n").0,
        400
    );

    // logrotate: move the file away, then SIGUSR1; later lines go to a new file.
    let rotated = TempFile::new("log.1", b"");
    std::fs::rename(&log.path, &rotated.path).unwrap();
    gw.signal("USR1");
    gw.wait_for_line("reopening access logs");
    gw.signal("TERM");
    assert!(gw.wait_exit().success());

    assert!(
        log.path.exists(),
        "the log was reopened under its configured name"
    );
    let text = std::fs::read_to_string(&rotated.path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 12, "{text}");
    assert!(lines
        .iter()
        .any(|l| l["status"] == 400 && l["method"] == "-" && l["target"] == "-"));
    let first = lines
        .iter()
        .find(|l| l["request_id"] == "req-0")
        .expect("req-0 logged");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["target"], "/item/0?q=\"x\"");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 4);
    assert_eq!(first["upstream"], up.addr.to_string());
    assert_eq!(first["route"], 0);
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["duration_us"].as_u64().is_some() && first["upstream_us"].as_u64().is_some());
    assert!(lines
        .iter()
        .any(|l| l["status"] == 404 && l["route"].is_null()));
}

#[test]
fn combined_format() {
    let up = Upstream::ok("four");
    let log = TempFile::new("log", b"");
    let mut gw = Gateway::start(&config(up.addr, &log.path, "combined"));
    let raw = b"GET /a HTTP/1.1\r\nHost: api\r\nUser-Agent: test \"agent\"\r\n\r\n";
    assert_eq!(exchange(&gw, raw).0, 200);
    gw.signal("TERM");
    assert!(gw.wait_exit().success());
    let text = std::fs::read_to_string(&log.path).unwrap();
    let line = text.lines().next().expect("one line");
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.ends_with("] \"GET /a HTTP/1.1\" 200 4 \"-\" \"test \\\"agent\\\"\""),
        "{line}"
    );
}

/// A request without X-Request-Id gets one made by the gateway: sent upstream and logged; a
/// client's own id is passed through as it is, once.
#[test]
fn request_ids_are_generated_forwarded_and_logged() {
    let up = Upstream::ok("ok");
    let log = TempFile::new("log", b"");
    let mut gw = Gateway::start(&config(up.addr, &log.path, "json"));
    for _ in 0..3 {
        assert_eq!(
            exchange(&gw, b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n").0,
            200
        );
    }
    let given = b"GET /b HTTP/1.1\r\nHost: api\r\nX-Request-Id: from-client\r\n\r\n";
    assert_eq!(exchange(&gw, given).0, 200);
    gw.signal("TERM");
    assert!(gw.wait_exit().success());

    let seen = up.requests();
    let ids: Vec<String> = seen
        .iter()
        .map(|r| r.header("x-request-id").expect("an id upstream").to_owned())
        .collect();
    for id in &ids[..3] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert_eq!(ids[3], "from-client");
    let ids_on_b = seen[3]
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
        .count();
    assert_eq!(ids_on_b, 1);

    let text = std::fs::read_to_string(&log.path).unwrap();
    // Each worker buffers its own lines, so the file is in order per worker only.
    let mut logged: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| l["request_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut ids = ids;
    ids.sort();
    logged.sort();
    assert_eq!(logged, ids, "{text}");
}
