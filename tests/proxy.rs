//! The gateway end to end: the real binary on an ephemeral port, real upstream servers, raw
//! bytes on the client side. Every scenario runs once on the io_uring driver and once on epoll.

#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};

use gateway::{
    closed, exchange, fnv, on_both_drivers, read_response, Gateway, Seen, Upstream, FNV_START,
    PATIENCE,
};

/// A config proxying everything to `upstream`, with `extra_server` lines in `[server]` and
/// `extra_upstream` lines in the upstream; two workers unless `extra_server` says otherwise.
fn config(driver: &str, upstream: &str, extra_server: &str, extra_upstream: &str) -> String {
    let workers = if extra_server.contains("workers") {
        ""
    } else {
        "workers = 2"
    };
    format!(
        r#"
[server]
listen = ["{{listen}}"]
{workers}
pin = false
driver = "{driver}"
drain_timeout = "10s"
{extra_server}

[upstreams.backend]
targets = ["{upstream}"]
read_timeout = "2s"
{extra_upstream}

[upstreams.echo]
builtin = "echo"

[[routes]]
path_prefix = "/echo/"
upstream = "echo"

[[routes]]
host = "direct.example"
path_prefix = "/"
respond = {{ status = 200, body = "direct\n" }}

[[routes]]
host = "api.example"
path_prefix = "/"
upstream = "backend"
"#
    )
}

on_both_drivers! {
    get_and_post_with_length_and_chunked_bodies(driver) {
        let up = Upstream::spawn(|seen, s| {
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", seen.body.len());
            s.write_all(r.as_bytes()).is_ok() && s.write_all(&seen.body).is_ok()
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let (status, head, body) = exchange(&gw, b"GET /a?b=1 HTTP/1.1\r\nHost: api.example\r\nX-Custom: 1\r\n\r\n");
        assert_eq!((status, body.len()), (200, 0), "{head}");
        let (status, _, body) = exchange(&gw, b"POST /p HTTP/1.1\r\nHost: api.example\r\nContent-Length: 11\r\n\r\nhello world");
        assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
        let raw = b"POST /c HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        let (status, _, body) = exchange(&gw, raw);
        assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));

        let seen = up.requests();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].head.starts_with("GET /a?b=1 HTTP/1.1\r\nHost: api.example\r\n"), "{}", seen[0].head);
        assert_eq!(seen[0].header("x-custom"), Some("1"));
        assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(seen[0].header("x-forwarded-host"), Some("api.example"));
        assert_eq!(seen[0].header("via"), Some("1.1 ringgate"));
        assert_eq!(seen[1].body, b"hello world");
        assert_eq!(seen[1].header("content-length"), Some("11"));
        assert_eq!(seen[2].body, b"hello world");
        assert_eq!(seen[2].header("transfer-encoding"), Some("chunked"));
    }

    chunked_and_close_delimited_responses(driver) {
        let up = Upstream::spawn(|seen, s| {
            if seen.head.starts_with("GET /chunked") {
                s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n").is_ok()
            } else {
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil close");
                false
            }
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let (status, _, body) = exchange(&gw, b"GET /chunked HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, &b"abcdefg"[..]));
        let (status, head, body) = exchange(&gw, b"GET /eof HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, &b"until close"[..]));
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "re-chunked for a 1.1 client: {head}");
        // An HTTP/1.0 client gets the chunked body unframed, then a close.
        let (status, head, body) = exchange(&gw, b"GET /chunked HTTP/1.0\r\nHost: api.example\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, &b"abcdefg"[..]));
        assert!(head.contains("Connection: close"), "{head}");
    }

    three_pipelined_requests_are_answered_in_order(driver) {
        let up = Upstream::spawn(|seen, s| {
            let path = seen.head.split(' ').nth(1).unwrap().to_owned();
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len());
            s.write_all(r.as_bytes()).is_ok()
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let mut s = gw.connect();
        s.write_all(b"GET /one HTTP/1.1\r\nHost: api.example\r\n\r\nGET /two HTTP/1.1\r\nHost: api.example\r\n\r\nGET /three HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        for expected in ["/one", "/two", "/three"] {
            let (status, _, body) = read_response(&mut r);
            assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, expected));
        }
    }

    // A client with a fixed receive window pipelines direct answers of 8 MiB, more than the
    // gateway's send buffer can ever hold, between proxied requests: the gateway's first send
    // of each big answer can only take part of it, and the rest goes out through the driver,
    // whole and before the next response.
    large_answers_to_a_fixed_window_arrive_whole_and_in_order(driver) {
        const SIZE: usize = 8 << 20;
        let up = Upstream::spawn(|seen, s| {
            let path = seen.head.split(' ').nth(1).unwrap().to_owned();
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len());
            s.write_all(r.as_bytes()).is_ok()
        });
        let big: String = (0..SIZE).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let toml = config(driver, &up.addr.to_string(), "", "")
            + &format!("\n[[routes]]\nhost = \"big.example\"\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"{big}\" }}\n");
        let gw = Gateway::start(&toml);
        let s = gw.connect();
        // Locked, so it does not grow; above the loopback MSS, so the window still opens.
        let window: libc::c_int = 256 * 1024;
        // SAFETY: a valid socket, and a c_int option value of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&window as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let mut requests = String::new();
        for n in 0..3 {
            requests += "GET / HTTP/1.1\r\nHost: big.example\r\n\r\n";
            requests += &format!("GET /{n} HTTP/1.1\r\nHost: api.example\r\n\r\n");
        }
        (&s).write_all(requests.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        for n in 0..3 {
            let (status, _, body) = read_response(&mut r);
            assert_eq!((status, body.len()), (200, SIZE), "big answer {n}");
            assert!(body == big.as_bytes(), "big answer {n}: other bytes than configured");
            let (status, _, body) = read_response(&mut r);
            assert_eq!((status, body), (200, format!("/{n}").into_bytes()), "after big answer {n}");
        }
    }

    upstream_connections_are_reused(driver) {
        let up = Upstream::ok("pong");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let mut s = gw.connect();
        let mut r = BufReader::new(s.try_clone().unwrap());
        for _ in 0..100 {
            s.write_all(b"GET /ping HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
            let (status, _, body) = read_response(&mut r);
            assert_eq!((status, body.as_slice()), (200, &b"pong"[..]));
        }
        // Separate client connections may land on either worker; each has its own pool.
        for _ in 0..20 {
            let (status, _, _) = exchange(&gw, b"GET /ping HTTP/1.1\r\nHost: api.example\r\n\r\n");
            assert_eq!(status, 200);
        }
        let opened = up.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!(opened <= 2, "{opened} upstream connections for 120 requests");
        assert_eq!(up.requests().len(), 120);
    }

    upstream_down_is_502(driver) {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let gw = Gateway::start(&config(driver, &port.to_string(), "", ""));
        let (status, head, _) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!(status, 502, "{head}");
    }

    silent_upstream_is_504(driver) {
        let up = Upstream::spawn(|_, _| true);
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let (status, _, _) = exchange(&gw, b"GET /slow HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!(status, 504);
        assert_eq!(up.requests().len(), 1);
    }

    garbage_is_400_and_close(driver) {
        let up = Upstream::ok("x");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let mut s = gw.connect();
        s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let (status, head, _) = read_response(&mut r);
        assert_eq!(status, 400, "{head}");
        assert!(head.contains("Connection: close"));
        assert!(closed(&mut r));
        assert!(up.requests().is_empty());
    }

    no_route_is_404(driver) {
        let up = Upstream::ok("x");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let (status, _, body) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n");
        assert_eq!((status, body.as_slice()), (404, &b"404 Not Found\n"[..]));
        assert!(up.requests().is_empty());
    }

    smuggling_is_400_and_never_forwarded(driver) {
        let up = Upstream::ok("x");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let raw = b"POST / HTTP/1.1\r\nHost: api.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.example\r\n\r\n";
        let mut s = gw.connect();
        s.write_all(raw).unwrap();
        let mut r = BufReader::new(s);
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, 400);
        assert!(closed(&mut r));
        assert!(up.requests().is_empty(), "upstream saw {:?}", up.requests());
    }

    slowloris_head_is_408(driver) {
        let up = Upstream::ok("x");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "header_timeout = \"500ms\"", ""));
        let mut s = gw.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\nX-Slow: ").unwrap();
        let mut r = BufReader::new(s);
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, 408);
        assert!(closed(&mut r));
    }

    keepalive_deadline_moves_with_each_request(driver) {
        // Requests every 150 ms for well past the first request's 400 ms deadline: each one
        // moves the deadline (the timer fires at the old one and waits on), and the connection
        // closes 400 ms after the last answer, not before.
        let up = Upstream::ok("x");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "keepalive_timeout = \"400ms\"", ""));
        let mut r = BufReader::new(gw.connect());
        let mut answered = std::time::Instant::now();
        for _ in 0..7 {
            std::thread::sleep(std::time::Duration::from_millis(150));
            let (status, head, _) = gateway::get_on(&mut r, "/");
            assert_eq!(status, 200, "{head}");
            answered = std::time::Instant::now();
        }
        assert!(closed(&mut r));
        // A timer left at an earlier request's deadline would close at most 150 ms after the
        // last answer; the slack below 400 ms is for a busy machine's scheduling.
        let idle = answered.elapsed();
        assert!(idle >= std::time::Duration::from_millis(300), "closed after {idle:?} idle");
        assert_eq!(up.requests().len(), 7);
    }

    header_timeout_after_an_idle_wait_is_408(driver) {
        // The keep-alive wait armed the connection's timer 5 s out; a partial head then needs
        // it moved to the 300 ms header deadline.
        let up = Upstream::ok("x");
        let extra = "keepalive_timeout = \"5s\"\nheader_timeout = \"300ms\"";
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), extra, ""));
        let mut r = BufReader::new(gw.connect());
        assert_eq!(gateway::get_on(&mut r, "/").0, 200);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let sent = std::time::Instant::now();
        r.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\nX-Slow: ").unwrap();
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, 408);
        let waited = sent.elapsed();
        assert!(waited < std::time::Duration::from_secs(3), "408 after {waited:?}");
        assert!(closed(&mut r));
    }

    silent_upstream_on_a_reused_connection_is_504(driver) {
        // The upstream timer was armed by the first request's quick answer; the second
        // request's wait must still end in read_timeout (2 s), not hang.
        let up = Upstream::spawn(|seen, s| {
            // Silent on /slow, and the connection stays open.
            seen.head.starts_with("GET /slow ")
                || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_ok()
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let mut r = BufReader::new(gw.connect());
        assert_eq!(gateway::get_on(&mut r, "/").0, 200);
        let sent = std::time::Instant::now();
        let (status, head, _) = gateway::get_on(&mut r, "/slow");
        assert_eq!(status, 504, "{head}");
        let waited = sent.elapsed();
        assert!(waited >= std::time::Duration::from_millis(1900), "504 after {waited:?}");
        assert_eq!(up.requests().len(), 2);
    }

    direct_answers_are_the_same_for_every_client_and_follow_a_reload(driver) {
        // Keep-alive HTTP/1.1 GETs get fields made in advance; HEAD, HTTP/1.0 and closing
        // requests, and a reload's new body, must read exactly as the ones made per request.
        let toml = |listen: &str, body: &str| {
            format!(
                r#"
[server]
listen = ["{listen}"]
workers = 1
pin = false
driver = "{driver}"

[[routes]]
path_prefix = "/"
respond = {{ status = 201, body = "{body}", headers = {{ "content-type" = "application/json", "x-a" = "1" }} }}
"#
            )
        };
        let mut gw = Gateway::start(&toml("{listen}", "made\\n"));
        let head = |length: usize, close: bool| {
            let connection = if close { "Connection: close\r\n" } else { "" };
            format!("HTTP/1.1 201 Created\r\nServer: ringgate\r\ncontent-type: application/json\r\nx-a: 1\r\nContent-Length: {length}\r\n{connection}\r\n")
        };
        let read_head = |r: &mut BufReader<std::net::TcpStream>| {
            let mut text = String::new();
            while !text.ends_with("\r\n\r\n") {
                assert!(r.read_line(&mut text).unwrap() > 0, "closed in a head: {text:?}");
            }
            text
        };
        let mut r = BufReader::new(gw.connect());
        for request in ["GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"] {
            r.get_mut().write_all(request.as_bytes()).unwrap();
            assert_eq!(read_head(&mut r), head(5, false), "{request}");
            if request.starts_with("GET") {
                let mut body = [0u8; 5];
                r.read_exact(&mut body).unwrap();
                assert_eq!(&body, b"made\n");
            }
        }
        // Nothing after the HEAD's head: the next answer starts right there.
        r.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(read_head(&mut r), head(5, true));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"made\n");
        let (status, text, body) = exchange(&gw, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!((status, text, body.as_slice()), (201, head(5, true), &b"made\n"[..]));

        std::fs::write(gw.config_path(), toml(&gw.addr.to_string(), "again\\n")).unwrap();
        gw.signal("HUP");
        gw.wait_for_line("reloaded");
        let mut r = BufReader::new(gw.connect());
        let (status, text, body) = gateway::get_on(&mut r, "/");
        assert_eq!((status, text, body.as_slice()), (201, head(6, false), &b"again\n"[..]));
    }

    direct_response_and_echo(driver) {
        let up = Upstream::ok("x");
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let (status, _, body) = exchange(&gw, b"GET /anything HTTP/1.1\r\nHost: direct.example\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, &b"direct\n"[..]));
        let (status, head, body) = exchange(&gw, b"GET /echo/hi HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200, "{head}");
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["method"], "GET");
        assert_eq!(doc["target"], "/echo/hi");
    }

    sigterm_lets_the_slow_request_finish_and_exits_0(driver) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let up = Upstream::spawn(move |_, s| {
            let _ = wait.lock().unwrap().recv_timeout(PATIENCE);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone").is_ok()
        });
        let mut gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let mut s = gw.connect();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        up.next_arrival();
        gw.signal("TERM");
        // Both workers have begun draining before the upstream answers.
        gw.wait_for_line("worker draining worker=0");
        gw.wait_for_line("worker draining worker=1");
        release.send(()).unwrap();
        let mut r = BufReader::new(s);
        let (status, head, body) = read_response(&mut r);
        assert_eq!((status, body.as_slice()), (200, &b"done"[..]));
        assert!(head.contains("Connection: close"), "a draining gateway closes: {head}");
        let exit = gw.wait_exit();
        assert!(exit.success(), "{exit:?}");
    }

    websocket_upgrade_tunnels_both_ways(driver) {
        let up = Upstream::websocket_echo();
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let mut s = gw.connect();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: api.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let (status, head, _) = read_response(&mut r);
        assert_eq!(status, 101, "{head}");
        assert!(head.to_ascii_lowercase().contains("upgrade: websocket"));
        let seen = up.requests();
        assert_eq!(seen[0].header("upgrade"), Some("websocket"));
        for frame in [&b"\x81\x05hello"[..], b"\x82\x03\x01\x02\x03"] {
            s.write_all(frame).unwrap();
            let mut back = vec![0u8; frame.len()];
            r.read_exact(&mut back).unwrap();
            assert_eq!(back, frame);
        }
    }
    expect_continue_head_and_body_limits(driver) {
        let up = Upstream::spawn(|seen, s| {
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", seen.body.len());
            s.write_all(r.as_bytes()).is_ok() && s.write_all(&seen.body).is_ok()
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "max_body = 16", ""));
        // Expect: 100-continue: the gateway says 100 before the client sends its body.
        let mut s = gw.connect();
        s.write_all(b"PUT /f HTTP/1.1\r\nHost: api.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, 100);
        s.write_all(b"hello").unwrap();
        let (status, _, body) = read_response(&mut r);
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(up.requests()[0].header("expect"), None, "the gateway answered the expectation");
        // HEAD: the upstream's length, no body; the connection stays usable.
        s.write_all(b"HEAD /h HTTP/1.1\r\nHost: api.example\r\n\r\nGET /g HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        let (status, head, body) = read_response(&mut r);
        assert_eq!((status, body.len()), (200, 0), "{head}");
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, 200);
        // Over max_body: 413 before anything is forwarded.
        let before = up.requests().len();
        let (status, _, _) = exchange(&gw, b"POST /big HTTP/1.1\r\nHost: api.example\r\nContent-Length: 17\r\n\r\n01234567890123456");
        assert_eq!(status, 413);
        assert_eq!(up.requests().len(), before);
    }

    stale_pooled_connection_is_retried_once(driver) {
        // Closes every connection after one response, without saying so.
        let up = Upstream::spawn(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            let _ = s.shutdown(std::net::Shutdown::Both);
            false
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "workers = 1", ""));
        let mut s = gw.connect();
        let mut r = BufReader::new(s.try_clone().unwrap());
        for _ in 0..3 {
            s.write_all(b"GET /x HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
            let (status, _, body) = read_response(&mut r);
            assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        }
        assert_eq!(up.requests().len(), 3);
    }

    malformed_upstream_response_is_502(driver) {
        let up = Upstream::spawn(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok");
            false
        });
        let gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let (status, _, _) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!(status, 502);
    }

    connections_over_the_limit_are_closed_at_accept(driver) {
        let up = Upstream::ok("x");
        let mut gw = Gateway::start(&config(driver, &up.addr.to_string(), "workers = 1\nmax_connections = 1", ""));
        let mut first = gw.connect();
        first.write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        let mut r = BufReader::new(first.try_clone().unwrap());
        assert_eq!(read_response(&mut r).0, 200);
        let mut second = gw.connect();
        assert!(closed(&mut second), "the second connection is closed at accept");
        gw.wait_for_line("connection refused: worker at max_connections");
        first.write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r).0, 200, "the first one still works");
    }
}

/// 256 MiB up and 256 MiB down through the gateway while its RSS stays under 64 MiB, on each
/// driver.
#[test]
fn large_bodies_stream_with_bounded_memory() {
    for driver in ["io_uring", "epoll"] {
        stream_large_bodies(driver);
    }
}

fn stream_large_bodies(driver: &str) {
    const SIZE: u64 = 256 << 20;
    let up = Upstream::spawn(|seen, s| {
        if seen.head.starts_with("POST") {
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{:016x}",
                seen.body_hash
            );
            return s.write_all(r.as_bytes()).is_ok();
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let block = pattern_block();
        (0..SIZE / block.len() as u64).all(|_| s.write_all(&block).is_ok())
    });
    let gw = Gateway::start(&config(
        driver,
        &up.addr.to_string(),
        "max_body = \"1GiB\"",
        "",
    ));

    let mut s = gw.connect();
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: api.example\r\nContent-Length: {SIZE}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let block = pattern_block();
    let mut hash = FNV_START;
    for _ in 0..SIZE / block.len() as u64 {
        s.write_all(&block).unwrap();
        hash = fnv(hash, &block);
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (status, _, body) = read_response(&mut r);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{hash:016x}"),
        "upstream saw the same bytes"
    );
    assert_eq!(up.requests()[0].body_len, SIZE);

    s.write_all(b"GET /down HTTP/1.1\r\nHost: api.example\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte).unwrap();
        head.push(byte[0] as char);
    }
    assert!(head.contains(&format!("Content-Length: {SIZE}")), "{head}");
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut down_hash = FNV_START;
    while got < SIZE {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "download cut at {got}");
        down_hash = fnv(down_hash, &buf[..n]);
        got += n as u64;
    }
    assert_eq!(down_hash, hash, "client got the bytes the upstream sent");
    let rss = gw.peak_rss_kib();
    assert!(rss < 64 * 1024, "{driver}: peak RSS {rss} KiB");
}

/// A gateway on one worker with `[admin]`, proxying everything to `upstream`, with a read
/// timeout long enough for an upstream that holds its answers until a test lets them go.
fn one_worker_with_admin(driver: &str, upstream: &str) -> String {
    one_worker_with_read_timeout(driver, upstream, "20s")
}

/// The same with the upstream's `read_timeout`.
fn one_worker_with_read_timeout(driver: &str, upstream: &str, read_timeout: &str) -> String {
    format!(
        "[server]\nlisten = [\"{{listen}}\"]\nworkers = 1\npin = false\ndriver = \"{driver}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.backend]\ntargets = [\"{upstream}\"]\nread_timeout = \"{read_timeout}\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"backend\"\n"
    )
}

/// What the upstream sends for `/big/N`: 1 MiB that differs with N.
fn numbered_body(n: usize) -> Vec<u8> {
    (0..1usize << 20).map(|i| ((i + n) % 251) as u8).collect()
}

/// An upstream's start of `/big/N`: the head and the body's first `first` bytes. N and the
/// whole body, for the rest; `None` if the gateway went away.
fn start_numbered_body(seen: &Seen, s: &mut TcpStream, first: usize) -> Option<(usize, Vec<u8>)> {
    let path = seen.head.split(' ').nth(1).unwrap_or_default();
    let n: usize = path.trim_start_matches("/big/").parse().unwrap_or(0);
    let body = numbered_body(n);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(&body[..first]).ok()?;
    Some((n, body))
}

on_both_drivers! {
    more_large_bodies_at_once_than_buffers_to_lend(driver) {
        // Each of LENT_MAX + 8 downloads is held by the upstream after its first 64 KiB, until
        // all of them are: the worker lends all its large buffers, relays the other 8 through
        // the connections' own, and counts those. Every client gets its own bytes, and the
        // buffers are all back afterwards.
        const HELD_AFTER: usize = 64 * 1024;
        let clients = ringgate::buffers::LENT_MAX + 8;
        let held = Arc::new((Mutex::new(0usize), Condvar::new()));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let (up_held, up_release) = (Arc::clone(&held), Arc::clone(&release));
        let up = Upstream::spawn(move |seen, s| {
            let Some((_, body)) = start_numbered_body(seen, s, HELD_AFTER) else { return false };
            *up_held.0.lock().unwrap() += 1;
            up_held.1.notify_all();
            let (flag, cv) = &*up_release;
            let _ = cv.wait_timeout_while(flag.lock().unwrap(), PATIENCE, |go| !*go).unwrap();
            s.write_all(&body[HELD_AFTER..]).is_ok()
        });
        let mut gw = Gateway::start(&one_worker_with_admin(driver, &up.addr.to_string()));
        let admin = gw.admin_addr();
        let downloads: Vec<_> = (0..clients)
            .map(|n| {
                let s = gw.connect();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    gateway::get_on(&mut r, &format!("/big/{n}"))
                })
            })
            .collect();
        let (count, cv) = &*held;
        let (all_held, _) = cv
            .wait_timeout_while(count.lock().unwrap(), PATIENCE, |c| *c < clients)
            .unwrap();
        assert_eq!(*all_held, clients, "every download reached the upstream");
        drop(all_held);
        let worker = |m: &std::collections::BTreeMap<String, f64>, name: &str| {
            m.get(&format!("{name}{{worker=\"0\"}}")).copied()
        };
        eventually("every large buffer lent and the rest of the relays counted", || {
            let m = gateway::scrape(admin);
            let seen = (
                worker(&m, "ringgate_relay_buffers_lent"),
                worker(&m, "ringgate_relay_buffers_exhausted_total"),
            );
            let want = (Some(ringgate::buffers::LENT_MAX as f64), Some(8.0));
            if seen == want { Ok(()) } else { Err(format!("lent and exhausted {seen:?}")) }
        });
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        for (n, download) in downloads.into_iter().enumerate() {
            let (status, head, body) = download.join().unwrap();
            assert_eq!(status, 200, "{head}");
            assert!(body == numbered_body(n), "download {n}: {} bytes, not its own", body.len());
        }
        every_lease_returned(admin);
    }

    a_relay_refused_a_large_buffer_gets_one_when_one_comes_back(driver) {
        // LENT_MAX downloads hold every large buffer; one more is refused and reads into its
        // connection's own. Once the others are done and the upstream sends it more, it
        // borrows a buffer for the rest of its body, rather than keeping 16 KiB reads to the
        // end (which left it 16 times slower than its neighbours).
        const PIECE: usize = 64 * 1024;
        let lenders = ringgate::buffers::LENT_MAX;
        // How many responses the upstream holds after their first piece, and how far the
        // test has let them go: 1, the first `lenders` finish; 2, the last one sends a second
        // piece and holds again; 3, it finishes.
        let state = Arc::new((Mutex::new((0usize, 0u8)), Condvar::new()));
        let up_state = Arc::clone(&state);
        let up = Upstream::spawn(move |seen, s| {
            let Some((n, body)) = start_numbered_body(seen, s, PIECE) else { return false };
            let (lock, cv) = &*up_state;
            lock.lock().unwrap().0 += 1;
            cv.notify_all();
            let until = |stage: u8| {
                let _ = cv.wait_timeout_while(lock.lock().unwrap(), PATIENCE, |st| st.1 < stage);
            };
            if n < lenders {
                until(1);
                return s.write_all(&body[PIECE..]).is_ok();
            }
            until(2);
            if s.write_all(&body[PIECE..2 * PIECE]).is_err() {
                return false;
            }
            until(3);
            s.write_all(&body[2 * PIECE..]).is_ok()
        });
        let mut gw = Gateway::start(&one_worker_with_admin(driver, &up.addr.to_string()));
        let admin = gw.admin_addr();
        let metric = |name: &str| gateway::scrape(admin).get(&format!("{name}{{worker=\"0\"}}")).copied();
        let held = |count: usize| {
            let (lock, cv) = &*state;
            let st = cv.wait_timeout_while(lock.lock().unwrap(), PATIENCE, |st| st.0 < count);
            assert_eq!(st.unwrap().0.0, count, "downloads held by the upstream");
        };
        let set_stage = |stage: u8| {
            state.0.lock().unwrap().1 = stage;
            state.1.notify_all();
        };
        let downloads: Vec<_> = (0..lenders)
            .map(|n| {
                let s = gw.connect();
                std::thread::spawn(move || gateway::get_on(&mut BufReader::new(s), &format!("/big/{n}")))
            })
            .collect();
        held(lenders);
        eventually("every large buffer lent", || match metric("ringgate_relay_buffers_lent") {
            Some(n) if n == lenders as f64 => Ok(()),
            other => Err(format!("lent {other:?}")),
        });
        let mut last = BufReader::new(gw.connect());
        write!(last.get_mut(), "GET /big/{lenders} HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        held(lenders + 1);
        eventually("the last relay refused", || {
            match metric("ringgate_relay_buffers_exhausted_total") {
                Some(1.0) => Ok(()),
                other => Err(format!("exhausted {other:?}")),
            }
        });
        set_stage(1);
        for (n, download) in downloads.into_iter().enumerate() {
            let (status, head, body) = download.join().unwrap();
            assert_eq!(status, 200, "{head}");
            assert!(body == numbered_body(n), "download {n}: {} bytes, not its own", body.len());
        }
        set_stage(2);
        eventually("the last relay lent a buffer", || match metric("ringgate_relay_buffers_lent") {
            Some(1.0) => Ok(()),
            other => Err(format!("lent {other:?}")),
        });
        set_stage(3);
        let (status, head, body) = read_response(&mut last);
        assert_eq!(status, 200, "{head}");
        assert!(body == numbered_body(lenders), "{} bytes, not its own", body.len());
        assert_eq!(metric("ringgate_relay_buffers_exhausted_total"), Some(1.0), "counted once");
        every_lease_returned(admin);
    }

    a_request_pipelined_after_a_large_body_is_answered(driver) {
        // The client's large body is read into a lent buffer, no further than its end; the
        // request behind it is read into the connection's own buffer, and answered.
        let up = Upstream::spawn(|seen, s| {
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{:016x}",
                seen.body_hash
            );
            s.write_all(r.as_bytes()).is_ok()
        });
        let gw = Gateway::start(&one_worker_with_admin(driver, &up.addr.to_string()));
        let body = numbered_body(7);
        let mut bytes = format!(
            "POST /up HTTP/1.1\r\nHost: api.example\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: api.example\r\n\r\n");
        let s = gw.connect();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
        let mut r = BufReader::new(s);
        let (status, head, hash) = read_response(&mut r);
        assert_eq!(status, 200, "{head}");
        assert_eq!(hash, format!("{:016x}", fnv(FNV_START, &body)).into_bytes());
        let (status, head, _) = read_response(&mut r);
        assert_eq!(status, 200, "{head}");
        sender.join().unwrap();
        let seen = up.requests();
        assert_eq!(seen.len(), 2);
        assert!(seen[1].head.starts_with("GET /after "), "{}", seen[1].head);
        assert_eq!(seen[0].body_len, body.len() as u64);
    }
}

on_both_drivers! {
    a_large_response_cut_by_its_read_timeout_gives_its_buffer_back(driver) {
        // The upstream stops after 64 KiB of 1 MiB: the read into the lent buffer times out
        // and takes the buffer with it. The lease is still returned, and the next download
        // borrows a new buffer and arrives whole.
        let up = Upstream::spawn(|seen, s| {
            let body = numbered_body(2);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            if s.write_all(head.as_bytes()).is_err() {
                return false;
            }
            if seen.head.starts_with("GET /stall ") {
                let _ = s.write_all(&body[..64 * 1024]);
                // Until the gateway gives up on this connection.
                let _ = s.read(&mut [0u8; 1]);
                return false;
            }
            s.write_all(&body).is_ok()
        });
        let mut gw =
            Gateway::start(&one_worker_with_read_timeout(driver, &up.addr.to_string(), "300ms"));
        let admin = gw.admin_addr();
        let mut r = BufReader::new(gw.connect());
        r.get_mut().write_all(b"GET /stall HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        let mut cut = Vec::new();
        let _ = r.read_to_end(&mut cut);
        assert!(cut.len() < 1 << 20, "a cut response: the client's connection is closed");
        every_lease_returned(admin);
        let mut r = BufReader::new(gw.connect());
        let (status, head, body) = gateway::get_on(&mut r, "/big");
        assert_eq!(status, 200, "{head}");
        assert!(body == numbered_body(2), "{} bytes, not the upstream's", body.len());
    }

    a_large_close_delimited_response_arrives_whole(driver) {
        // No Content-Length: the body ends when the upstream closes. An HTTP/1.0 client gets
        // it as it is, read into a lent buffer all the way, then the end of its connection.
        let up = Upstream::spawn(|_, s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(&numbered_body(3));
            false
        });
        let gw = Gateway::start(&one_worker_with_admin(driver, &up.addr.to_string()));
        let mut s = gw.connect();
        s.write_all(b"GET /eof HTTP/1.0\r\nHost: api.example\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        assert!(all[9..].starts_with(b"200"), "{}", String::from_utf8_lossy(&all[..end]));
        assert!(all[end..] == numbered_body(3)[..], "{} body bytes", all.len() - end);
    }

    a_client_leaving_mid_download_gives_the_buffer_back(driver) {
        // The client reads 64 KiB of 1 MiB and closes; the relay's send fails, and the lease
        // comes back with the connection's end.
        let up = Upstream::spawn(|_, s| {
            let body = numbered_body(4);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).is_ok() && s.write_all(&body).is_ok()
        });
        let mut gw = Gateway::start(&one_worker_with_admin(driver, &up.addr.to_string()));
        let admin = gw.admin_addr();
        let mut s = gw.connect();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
        let mut some = vec![0u8; 64 * 1024];
        s.read_exact(&mut some).unwrap();
        drop(s);
        every_lease_returned(admin);
        let mut r = BufReader::new(gw.connect());
        let (status, head, body) = gateway::get_on(&mut r, "/big");
        assert_eq!(status, 200, "{head}");
        assert!(body == numbered_body(4), "{} bytes, not the upstream's", body.len());
    }

    bytes_past_a_large_response_keep_its_upstream_connection_out_of_the_pool(driver) {
        // The upstream declares 1 MiB and sends an answer nobody asked for right behind it.
        // The gateway must read those bytes and drop that connection rather than pool it, or
        // the next request on it would get them as its answer.
        let up = Upstream::spawn(|seen, s| {
            if seen.head.starts_with("GET /big ") {
                let body = numbered_body(1);
                let mut out =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                out.extend_from_slice(&body);
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale");
                return s.write_all(&out).is_ok();
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh").is_ok()
        });
        let gw = Gateway::start(&one_worker_with_admin(driver, &up.addr.to_string()));
        let mut r = BufReader::new(gw.connect());
        let (status, head, body) = gateway::get_on(&mut r, "/big");
        assert_eq!(status, 200, "{head}");
        assert!(body == numbered_body(1), "{} bytes, not the upstream's", body.len());
        let (status, head, body) = gateway::get_on(&mut r, "/next");
        assert_eq!(status, 200, "{head}");
        assert_eq!(String::from_utf8_lossy(&body), "fresh");
        assert_eq!(
            up.connections.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the first upstream connection was dropped, not reused"
        );
    }
}

/// Waits until worker 0 has every large buffer it lent back (a relay returns its lease just
/// after its last send, which the client may see first).
fn every_lease_returned(admin: std::net::SocketAddr) {
    eventually("every lease returned", || {
        match gateway::scrape(admin).get("ringgate_relay_buffers_lent{worker=\"0\"}") {
            Some(0.0) => Ok(()),
            other => Err(format!("lent {other:?}")),
        }
    });
}

/// Waits, within PATIENCE, until `condition` holds (is `Ok`); fails with what it last said.
fn eventually(what: &str, mut condition: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while let Err(state) = condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {state}"
        );
        std::thread::yield_now();
    }
}

fn pattern_block() -> Vec<u8> {
    (0..64 * 1024u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn drivers_are_reported_per_worker() {
    let up = Upstream::ok("x");
    for driver in ["io_uring", "epoll"] {
        let mut gw = Gateway::start(&config(driver, &up.addr.to_string(), "", ""));
        let line = gw.wait_for_line("worker started");
        assert!(line.contains(&format!("driver={driver}")), "{line}");
    }
}

#[test]
fn check_reports_line_column_and_key() {
    let bad = gateway::TempFile::new("toml", b"[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"missing\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "--config"])
        .arg(&bad.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6:12", bad.path.display())),
        "{err}"
    );
    assert!(err.contains("routes[0].upstream"), "{err}");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "--config", "config/ringgate.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("127.0.0.1:8080"));
}
