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
    let admin = gw.admin_addr();

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
    // Merged from both workers' HdrHistograms: 30 requests on loopback, each well under 1 s.
    let quantile = |q| {
        value(
            "ringgate_request_duration_quantile_seconds",
            Some(("quantile", q)),
        )
    };
    let (p50, p99) = (quantile("0.5").unwrap(), quantile("0.99").unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 1.0, "{text}");
    assert!(!text.contains("ringgate_hdr_us"), "raw bins stay internal");
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

/// Per-route responses (kept under the same label across a reload that reorders routes),
/// upstream failures by upstream, client bytes both ways, and reload outcomes.
#[test]
fn metrics_by_route_upstream_bytes_and_reload() {
    let up = Upstream::ok("x");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = |first: &str, second: &str| {
        format!(
            "[server]\nlisten = [\"{{listen}}\"]\nworkers = 2\npin = false\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.backend]\ntargets = [\"{}\"]\n[upstreams.dead]\ntargets = [\"{dead}\"]\n{first}{second}",
            up.addr
        )
    };
    let a = "[[routes]]\nhost = \"api\"\npath_prefix = \"/a/\"\nupstream = \"backend\"\n";
    let b = "[[routes]]\nhost = \"api\"\npath_prefix = \"/b/\"\nupstream = \"dead\"\n";
    let mut gw = Gateway::start(&config(a, b));
    let admin = gw.admin_addr();

    let (mut sent, mut received) = (0u64, 0u64);
    let mut call = |path: &str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
        let mut s = gw.connect();
        s.write_all(raw.as_bytes()).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        sent += raw.len() as u64;
        received += answer.len() as u64;
        String::from_utf8_lossy(&answer[9..12]).into_owned()
    };
    for _ in 0..10 {
        assert_eq!(call("/a/x"), "200");
    }
    for _ in 0..3 {
        assert_eq!(call("/b/x"), "502");
    }
    for _ in 0..2 {
        assert_eq!(call("/c/x"), "404");
    }
    // The same routes in the other order: /a/ keeps its label.
    std::fs::write(
        gw.config_path(),
        config(b, a).replace("{listen}", &gw.addr.to_string()),
    )
    .unwrap();
    assert_eq!(request(admin, "POST", "/reload").0, 200);
    for _ in 0..5 {
        assert_eq!(call("/a/x"), "200");
    }
    std::fs::write(gw.config_path(), "[server]\nworkers = 0\n").unwrap();
    assert_eq!(request(admin, "POST", "/reload").0, 422);

    let (_, text) = get(admin, "/metrics");
    let scrape = prometheus_parse::Scrape::parse(BufReader::new(text.as_bytes()).lines())
        .expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    let route = "ringgate_route_responses_total";
    assert_eq!(
        value(route, &[("route", "api/a/"), ("class", "2xx")]),
        Some(15.0),
        "{text}"
    );
    assert_eq!(
        value(route, &[("route", "api/b/"), ("class", "5xx")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(route, &[("route", "-"), ("class", "4xx")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            "ringgate_upstream_errors_total",
            &[("upstream", "dead"), ("reason", "upstream_refused")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value("ringgate_received_bytes_total", &[]),
        Some(sent as f64),
        "{text}"
    );
    assert_eq!(
        value("ringgate_sent_bytes_total", &[]),
        Some(received as f64),
        "{text}"
    );
    assert_eq!(
        value("ringgate_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        value("ringgate_config_reloads_total", &[("result", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        value("ringgate_config_last_reload_successful", &[]),
        Some(0.0)
    );
    for worker in ["0", "1"] {
        assert!(value("ringgate_worker_connections_open", &[("worker", worker)]).is_some());
        assert!(value("ringgate_upstream_idle_connections", &[("worker", worker)]).is_some());
    }
}

/// A scrape must not stop a worker: on epoll the control socket was blocking, and the worker
/// read it again after answering, so it stood still, every connection with it, until the next
/// scrape. Requests on a kept-alive connection after each of three scrapes, on both drivers.
#[test]
fn workers_keep_serving_after_a_scrape() {
    let up = Upstream::ok("x");
    for driver in ["io_uring", "epoll"] {
        let mut gw = Gateway::start(&format!(
            "[server]\nlisten = [\"{{listen}}\"]\nworkers = 1\npin = false\ndriver = \"{driver}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.backend]\ntargets = [\"{}\"]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"backend\"\n",
            up.addr
        ));
        let admin = gw.admin_addr();
        let mut r = BufReader::new(gw.connect());
        for scrape in 1..=3 {
            assert_eq!(get(admin, "/metrics").0, 200);
            let (status, head, _) = gateway::get_on(&mut r, "/");
            assert_eq!(status, 200, "{driver}, after scrape {scrape}: {head}");
        }
    }
}
