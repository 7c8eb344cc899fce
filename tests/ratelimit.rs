//! Rate limits end to end: with `steer = "client_ip"` every connection of one client lands on
//! one worker, so a per-client limit is exact across workers; other clients are unaffected.

#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use gateway::{read_response, Gateway, Upstream, PATIENCE};

fn config(upstream: SocketAddr, steer: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
workers = 2
pin = false
steer = "{steer}"

[rate_limits.per_client]
key = "client_ip"
rate = "5/s"
burst = 10
headers = true

[upstreams.backend]
targets = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "backend"
rate_limit = "per_client"
"#
    )
}

/// A connection to the gateway from the local address `from`.
fn connect_from(gw: &Gateway, from: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&gw.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

#[test]
fn one_client_gets_exactly_burst_plus_rate_times_elapsed() {
    let up = Upstream::ok("ok");
    let gw = Gateway::start(&config(up.addr, "client_ip"));
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>)> = (0..4)
        .map(|_| {
            let s = connect_from(&gw, "127.0.0.1");
            let r = BufReader::new(s.try_clone().unwrap());
            (s, r)
        })
        .collect();
    let (mut allowed, mut limited) = (0u64, 0u64);
    let mut denial = None;
    let start = Instant::now();
    for i in 0..1000 {
        let (s, r) = &mut conns[i % 4];
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (status, head, _) = read_response(r);
        match status {
            200 => allowed += 1,
            429 => {
                limited += 1;
                denial.get_or_insert(head);
            }
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let expected = 10.0 + (5.0 * elapsed).floor();
    assert!(
        (allowed as f64 - expected).abs() <= 1.0,
        "allowed {allowed} in {elapsed:.3}s, expected burst + rate x elapsed = {expected}"
    );
    assert_eq!(allowed + limited, 1000);
    assert_eq!(
        up.requests().len() as u64,
        allowed,
        "denied requests never reach the upstream"
    );
    let denial = denial.expect("some requests were limited");
    assert!(denial.contains("Retry-After: 1\r\n"), "{denial}");
    assert!(denial.contains("RateLimit-Limit: 10\r\n"), "{denial}");
    assert!(denial.contains("RateLimit-Remaining: 0\r\n"), "{denial}");

    // Another client address is unaffected, and allowed responses carry the headers.
    let other = connect_from(&gw, "127.0.0.2");
    let mut r = BufReader::new(other.try_clone().unwrap());
    (&other)
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (status, head, body) = read_response(&mut r);
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    assert!(head.contains("RateLimit-Remaining: 9\r\n"), "{head}");
}
