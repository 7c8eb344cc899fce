//! The admin listener: `/metrics` in Prometheus text format with every worker's counters
//! summed, `/healthz`, `/readyz`.

#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use gateway::{exchange, Gateway, Upstream, PATIENCE};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn metrics_count_what_was_sent() {
    let up = Upstream::ok("x");
    let mut gw = Gateway::start(&format!(
        r#"
[server]
listen = ["{{listen}}"]
workers = 2
pin = false

[admin]
listen = "127.0.0.1:0"

[upstreams.backend]
targets = ["{}"]

[[routes]]
host = "api"
path_prefix = "/"
upstream = "backend"
"#,
        up.addr
    ));
    let line = gw.wait_for_line("admin listening on ");
    let admin: SocketAddr = line
        .rsplit("admin listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    for _ in 0..25 {
        assert_eq!(exchange(&gw, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n").0, 200);
    }
    for _ in 0..5 {
        assert_eq!(
            exchange(&gw, b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n").0,
            404
        );
    }

    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    let lines = BufReader::new(text.as_bytes()).lines();
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("ringgate_requests_total", None), Some(30.0), "{text}");
    assert_eq!(
        value("ringgate_responses_total", Some(("class", "2xx"))),
        Some(25.0)
    );
    assert_eq!(
        value("ringgate_responses_total", Some(("class", "4xx"))),
        Some(5.0)
    );
    assert_eq!(
        value("ringgate_errors_total", Some(("reason", "no_route"))),
        Some(5.0)
    );
    assert_eq!(value("ringgate_workers", None), Some(2.0));
    let requests_timed = scrape
        .samples
        .iter()
        .find(|s| s.metric == "ringgate_request_duration_seconds")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => f64::NAN,
        });
    assert_eq!(
        requests_timed,
        Some(30.0),
        "every request is in the latency histogram"
    );
    assert!(value(
        "ringgate_request_duration_quantile_seconds",
        Some(("quantile", "0.99"))
    )
    .is_some());
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(admin, "/readyz").0, 200);
    assert_eq!(get(admin, "/nope").0, 404);
    let (status, config) = get(admin, "/config");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["generation"], 0);
    assert_eq!(config["config"]["upstreams"][0]["name"], "backend");

    // POST /reload answers with the new generation, or with why the file was refused.
    let (status, body) = request(admin, "POST", "/reload");
    assert_eq!((status, body.as_str()), (200, "reloaded: generation 1\n"));
    std::fs::write(
        gw.config_path(),
        "[server]\nlisten = [\"127.0.0.1:1\"]\nworkers = 0\n",
    )
    .unwrap();
    let (status, body) = request(admin, "POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(":3:11: server.workers"), "{body}");
    assert_eq!(
        exchange(&gw, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n").0,
        200,
        "old config serves"
    );
}
