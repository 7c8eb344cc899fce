//! Upstream resilience end to end (issue #9): the real binary, real upstream servers on
//! 127.0.0.1 that can be killed and brought back, and steady request loops. Waits poll a
//! condition with a bounded deadline (or wait for a log line), never sleep a fixed time.

#[path = "common/gateway.rs"]
mod gateway;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gateway::{exchange, read_response, Gateway, Upstream, PATIENCE};

/// A gateway with one upstream, `pool`, for every path; `[admin]` on an ephemeral port.
fn config(workers: usize, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
workers = {workers}
pin = false

[admin]
listen = "127.0.0.1:0"

[upstreams.pool]
{upstream}

[[routes]]
path_prefix = "/"
upstream = "pool"
"#
    )
}

fn targets(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("targets = [{}]", list.join(", "))
}

/// Polls `condition` until it holds; fails the test after PATIENCE.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// `/metrics`, parsed.
fn metrics(admin: SocketAddr) -> prometheus_parse::Scrape {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("no sample {name} {labels:?}: {other:?}"),
    }
}

/// An upstream server that can be killed (its listener closed and every connection cut,
/// so connects are refused) and brought back on the same port. It answers every request
/// with its one-letter name; requests other than health checks are counted.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: JoinHandle<()>,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let running = Some(Backend::serve(listener, name, Arc::clone(&hits)));
        Backend {
            name,
            addr,
            hits,
            running,
        }
    }

    fn serve(listener: TcpListener, name: &'static str, hits: Arc<AtomicUsize>) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (st, cs) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                cs.lock().unwrap().push(stream.try_clone().unwrap());
                let hits = Arc::clone(&hits);
                std::thread::spawn(move || answer(stream, name, &hits));
            }
        });
        Running {
            stop,
            conns,
            accept,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and cuts every connection.
    fn kill(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        running.accept.join().unwrap();
        for conn in running.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again.
    fn revive(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "rebinding {}: {e}", self.addr),
            }
        };
        self.running = Some(Backend::serve(listener, self.name, Arc::clone(&self.hits)));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serves one connection: every request (bodiless) gets `200` with the backend's name.
fn answer(stream: TcpStream, name: &str, hits: &AtomicUsize) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if !matches!(reader.read_line(&mut line), Ok(1..)) {
            return;
        }
        let health = line.starts_with("GET /healthz ");
        loop {
            let mut field = String::new();
            if !matches!(reader.read_line(&mut field), Ok(1..)) {
                return;
            }
            if field == "\r\n" {
                break;
            }
        }
        if !health {
            hits.fetch_add(1, Ordering::SeqCst);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// One response of a steady loop: when it came, whether it was a 200, and who sent it.
#[derive(Clone)]
struct Record {
    at: Instant,
    ok: bool,
    from: String,
}

/// Clients sending `GET /work` back to back on keep-alive connections (a new one after any
/// failure or close), recording every outcome.
struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(gateway: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, records) = (Arc::clone(&stop), Arc::clone(&records));
                std::thread::spawn(move || {
                    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                    while !stop.load(Ordering::SeqCst) {
                        if conn.is_none() {
                            let Ok(s) = TcpStream::connect(gateway) else {
                                continue;
                            };
                            s.set_read_timeout(Some(PATIENCE)).unwrap();
                            let r = BufReader::new(s.try_clone().unwrap());
                            conn = Some((s, r));
                        }
                        let Some((s, r)) = conn.as_mut() else {
                            continue;
                        };
                        let got = s
                            .write_all(b"GET /work HTTP/1.1\r\nHost: gw\r\n\r\n")
                            .ok()
                            .and_then(|()| response(r));
                        let record = match &got {
                            Some((status, _, body)) => Record {
                                at: Instant::now(),
                                ok: *status == 200,
                                from: body.clone(),
                            },
                            None => Record {
                                at: Instant::now(),
                                ok: false,
                                from: String::new(),
                            },
                        };
                        records.lock().unwrap().push(record);
                        if got.is_none_or(|(status, close, _)| close || status != 200) {
                            conn = None;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            records,
            threads,
        }
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let records = self.records.lock().unwrap().clone();
        records
    }
}

/// Reads one response without panicking: (status, whether it closes, body).
fn response(r: &mut BufReader<TcpStream>) -> Option<(u16, bool, String)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status: u16 = line.get(9..12)?.parse().ok()?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut field = String::new();
        if r.read_line(&mut field).ok()? == 0 {
            return None;
        }
        if field == "\r\n" {
            break;
        }
        let lower = field.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).ok()?;
    Some((status, close, String::from_utf8_lossy(&body).into_owned()))
}

/// Acceptance 1: three targets under a steady loop; one is killed, then brought back.
/// Returns the failed requests between the kill and the health checks' verdict.
fn kill_and_revive(retries: &str) -> usize {
    let mut backends = [
        Backend::start("A"),
        Backend::start("B"),
        Backend::start("C"),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let upstream = format!(
        "{}\nhealth = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy = 2, unhealthy = 3 }}\n\
         outlier = {{ consecutive_failures = 3, base_ejection = \"1s\", max_ejection = \"2s\" }}\n{retries}",
        targets(&addrs)
    );
    let mut gw = Gateway::start(&config(2, &upstream));
    let admin = gw.admin_addr();
    let victim = addrs[1];
    let load = Load::start(gw.addr, 4);
    eventually("traffic on every target", || {
        backends.iter().all(|b| b.hits() >= 50)
    });

    let killed_at = Instant::now();
    backends[1].kill();
    gw.wait_for_line(&format!("target unhealthy upstream=pool target={victim}"));
    let verdict_at = Instant::now();
    let scrape = metrics(admin);
    let target = victim.to_string();
    assert_eq!(
        sample(&scrape, "ringgate_upstream_healthy", &[("target", &target)]),
        0.0
    );
    // Then zero: a few hundred more requests, none failing.
    let seen = load.count();
    eventually("300 more requests", || load.count() >= seen + 300);
    let records = load.records();
    let failed_during = records
        .iter()
        .filter(|r| !r.ok && r.at >= killed_at && r.at <= verdict_at)
        .count();
    let failed_after = records
        .iter()
        .filter(|r| !r.ok && r.at > verdict_at)
        .count();
    assert_eq!(failed_after, 0, "requests failed after the verdict");

    // A reload keeps the verdict on a target that stays.
    std::fs::write(
        gw.config_path(),
        config(2, &upstream).replace("{listen}", &gw.addr.to_string()),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_line("reloaded");
    let scrape = metrics(admin);
    assert_eq!(
        sample(&scrape, "ringgate_upstream_healthy", &[("target", &target)]),
        0.0,
        "the reload kept the verdict"
    );

    // Back: after `healthy` passed checks it gets traffic again.
    let before = backends[1].hits();
    backends[1].revive();
    gw.wait_for_line(&format!("target healthy upstream=pool target={victim}"));
    eventually("traffic on the revived target", || {
        backends[1].hits() > before
    });
    let records = load.stop();
    let failed_total = records.iter().filter(|r| !r.ok).count();
    let from_b = records.iter().filter(|r| r.from == "B").count();
    println!(
        "{retries:?}: {} requests, {failed_during} failed between the kill and the verdict ({} ms), {failed_total} failed in all; B answered {from_b}",
        records.len(),
        verdict_at.duration_since(killed_at).as_millis()
    );
    failed_total
}

#[test]
fn killed_target_costs_no_request_with_retries_and_comes_back_after_healthy_checks() {
    let failed =
        kill_and_revive("retries = { attempts = 3, on = [\"connect-failure\", \"reset\"] }");
    assert_eq!(failed, 0, "with retries on, no request fails");
}

#[test]
fn killed_target_costs_a_handful_without_retries() {
    // Outlier detection ejects the target after 3 failures on each of the 2 workers; a
    // request in flight on each of the 4 clients may fail too.
    let failed = kill_and_revive("");
    assert!(failed <= 10, "{failed} requests failed");
}

#[test]
fn weighted_1_2_3_over_6000_requests() {
    let ups = [Upstream::ok("a"), Upstream::ok("b"), Upstream::ok("c")];
    let list: Vec<String> = ups
        .iter()
        .zip([1, 2, 3])
        .map(|(u, w)| format!("{{ addr = \"{}\", weight = {w} }}", u.addr))
        .collect();
    let upstream = format!("targets = [{}]\nbalance = \"weighted\"", list.join(", "));
    let gw = Gateway::start(&config(2, &upstream));
    let (done, finished) = mpsc::channel();
    for _ in 0..4 {
        let (addr, done) = (gw.addr, done.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for _ in 0..1500 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
                assert_eq!(read_response(&mut r).0, 200);
            }
            done.send(()).unwrap();
        });
    }
    for _ in 0..4 {
        finished.recv_timeout(PATIENCE).expect("a client finished");
    }
    let counts: Vec<usize> = ups.iter().map(|u| u.requests().len()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 6000);
    let shares: Vec<f64> = counts.iter().map(|&n| n as f64 / 6000.0).collect();
    println!("weighted 1:2:3 over 6000 requests: {counts:?} = {shares:?}");
    for (share, want) in shares.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!((share - want).abs() <= 0.02, "{counts:?}");
    }
}

/// An upstream that holds every request until `release` is dropped (or PATIENCE passes),
/// then answers `body`.
fn held(body: &'static str) -> (Upstream, mpsc::Sender<()>) {
    let (release, hold) = mpsc::channel::<()>();
    let hold = Mutex::new(hold);
    let up = Upstream::spawn(move |_, s| {
        let _ = hold.lock().unwrap().recv_timeout(PATIENCE);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).is_ok() && s.write_all(body.as_bytes()).is_ok()
    });
    (up, release)
}

#[test]
fn least_conn_sends_new_requests_past_the_slow_target() {
    let (slow, release) = held("slow");
    let fast = Upstream::ok("fast");
    let upstream = format!(
        "{}\nbalance = \"least_conn\"",
        targets(&[slow.addr, fast.addr])
    );
    let gw = Gateway::start(&config(1, &upstream));
    // One request at a time, each sent once the previous one either answered (fast) or
    // arrived at the slow target (and stays there).
    let (answered, answers) = mpsc::channel::<u16>();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (addr, answered) = (gw.addr, answered.clone());
        clients.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
            let (status, _, _) = read_response(&mut BufReader::new(s));
            let _ = answered.send(status);
        }));
        let deadline = Instant::now() + PATIENCE;
        loop {
            if answers.try_recv().is_ok() {
                break;
            }
            if slow.arrivals.lock().unwrap().try_recv().is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "request went nowhere");
            std::thread::yield_now();
        }
    }
    let at_slow = slow.requests().len();
    let at_fast = fast.requests().len();
    println!("least_conn with one slow target: slow {at_slow}, fast {at_fast}");
    assert_eq!(
        at_slow, 1,
        "only the first request waits at the slow target"
    );
    assert_eq!(at_fast, 19);
    drop(release);
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn consistent_hash_keeps_each_key_on_one_target() {
    let ups = [Upstream::ok("a"), Upstream::ok("b"), Upstream::ok("c")];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let upstream = format!(
        "{}\nbalance = \"consistent_hash\"\nhash_key = \"header:X-User\"",
        targets(&addrs)
    );
    let gw = Gateway::start(&config(2, &upstream));
    let mut owner: HashMap<u32, String> = HashMap::new();
    // New connections, so the requests of one user land on both workers.
    for round in 0..4 {
        for user in 0..40u32 {
            let raw = format!("GET /u HTTP/1.1\r\nHost: gw\r\nX-User: user-{user}\r\n\r\n");
            let (status, _, body) = exchange(&gw, raw.as_bytes());
            assert_eq!(status, 200);
            let body = String::from_utf8(body).unwrap();
            let first = owner.entry(user).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "user-{user} moved in round {round}");
        }
    }
    let mut per: HashMap<&str, usize> = HashMap::new();
    for target in owner.values() {
        *per.entry(target).or_default() += 1;
    }
    println!("consistent_hash: 40 users over 3 targets: {per:?}");
    assert_eq!(per.len(), 3, "every target owns some users: {per:?}");
}

#[test]
fn slow_target_past_per_try_timeout_is_retried_on_another_within_the_total_timeout() {
    let (slow, release) = held("slow");
    let fast = Upstream::ok("fast");
    let upstream = format!(
        "{}\ntimeout = \"2s\"\nretries = {{ attempts = 2, on = [\"timeout\"], per_try_timeout = \"200ms\", budget = \"100%\" }}",
        targets(&[slow.addr, fast.addr])
    );
    let gw = Gateway::start(&config(1, &upstream));
    // Round robin starts every request at the slow target (the retry moved the cursor past
    // the fast one); a budget of 100% lets every one of them retry.
    for _ in 0..4 {
        let started = Instant::now();
        let (status, _, body) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
        let took = started.elapsed();
        assert_eq!((status, body.as_slice()), (200, &b"fast"[..]));
        assert!(took < Duration::from_secs(2), "took {took:?}");
        println!("slow target, per_try_timeout 200ms: answered by the other in {took:?}");
    }
    assert_eq!(
        slow.requests().len(),
        4,
        "each request tried the slow one first"
    );
    assert_eq!(fast.requests().len(), 4);
    drop(release);
}

#[test]
fn retries_to_a_dead_upstream_stay_within_the_budget() {
    // Reads each request and closes without answering: every attempt is a reset.
    let dead = Upstream::spawn(|_, _| false);
    let upstream = format!(
        "{}\nretries = {{ attempts = 3, on = [\"reset\"], budget = \"20%\", min_retries = 3 }}",
        targets(&[dead.addr])
    );
    let mut gw = Gateway::start(&config(1, &upstream));
    let admin = gw.admin_addr();
    const REQUESTS: usize = 200;
    for _ in 0..REQUESTS {
        let (status, _, _) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(status, 502);
    }
    let attempts = dead.requests().len();
    let extra = attempts - REQUESTS;
    println!("dead upstream, 3 attempts allowed, 20% budget: {REQUESTS} requests made {attempts} attempts ({extra} retries)");
    // 20% of the requests, or the floor of 3 while there were fewer than 15.
    assert!(extra <= REQUESTS / 5, "{extra} retries");
    assert!(
        extra >= REQUESTS / 5 - 2,
        "the budget was used: {extra} retries"
    );
    let scrape = metrics(admin);
    assert_eq!(
        sample(&scrape, "ringgate_retries_total", &[("upstream", "pool")]),
        extra as f64
    );
    assert!(
        sample(
            &scrape,
            "ringgate_retry_budget_exhausted_total",
            &[("upstream", "pool")]
        ) > 0.0
    );
}

#[test]
fn breaker_answers_the_11th_concurrent_request_at_once_with_503() {
    let (slow, release) = held("ok");
    let upstream = format!(
        "{}\nbreaker = {{ max_requests = 10 }}",
        targets(&[slow.addr])
    );
    let mut gw = Gateway::start(&config(1, &upstream));
    let admin = gw.admin_addr();
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = gw.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        held.push(s);
    }
    for _ in 0..10 {
        slow.next_arrival();
    }
    let started = Instant::now();
    let (status, head, _) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
    let took = started.elapsed();
    println!("breaker: the 11th request got {status} in {took:?}");
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(
        slow.requests().len(),
        10,
        "the 11th never reached the upstream"
    );
    let scrape = metrics(admin);
    assert_eq!(
        sample(
            &scrape,
            "ringgate_breaker_rejections_total",
            &[("upstream", "pool"), ("limit", "max_requests")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "ringgate_errors_total",
            &[("reason", "breaker_open")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "ringgate_upstream_requests_in_flight",
            &[("upstream", "pool")]
        ),
        10.0
    );
    // Released: the ten finish, and the limit admits again.
    drop(release);
    for s in held {
        let (status, _, _) = read_response(&mut BufReader::new(s));
        assert_eq!(status, 200);
    }
    let (status, _, _) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(status, 200);
}
