//! Test harness: the real `ringgate` binary on an ephemeral port with a config written for the
//! test, and small real upstream servers that record what they received. Waits are on events
//! (a log line, a channel, a socket read with a timeout as a safety net), never on sleeps.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    lines: Receiver<String>,
    pub log: Vec<String>,
    _config: TempFile,
}

impl Gateway {
    /// Starts the gateway on `toml` (`{listen}` is replaced by an ephemeral 127.0.0.1 port)
    /// and waits for its "ready" line.
    pub fn start(toml: &str) -> Gateway {
        Gateway::start_with_env(toml, &[])
    }

    /// As [`Gateway::start`], with extra environment variables (e.g. NOTIFY_SOCKET).
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_command(toml, |cmd| {
            cmd.envs(env.iter().copied());
        })
    }

    /// As [`Gateway::start`], after `tweak` has had the command (environment, limits).
    pub fn start_with_command(toml: &str, tweak: impl FnOnce(&mut Command)) -> Gateway {
        let config = TempFile::new("toml", toml.replace("{listen}", "127.0.0.1:0").as_bytes());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringgate"));
        cmd.args(["run", "--config"])
            .arg(&config.path)
            .env("RINGGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn ringgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gw = Gateway {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            lines,
            log: Vec::new(),
            _config: config,
        };
        let listening = gw.wait_for_line("listening on ");
        let addr = listening.rsplit("listening on ").next().unwrap().trim();
        gw.addr = addr.parse().expect("listen address in log");
        gw.wait_for_line(" ready");
        gw
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let line = self.lines.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!("no log line with {needle:?}; log so far: {:#?}", self.log)
            });
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The config file the gateway runs on (rewrite it, then SIGHUP, to reload).
    /// The admin listener's address, from the log line that announces it.
    pub fn admin_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("admin listening on ");
        line.rsplit("admin listening on ")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .expect("admin address in the log")
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self._config.path
    }

    /// Waits for the `n`th log line (counting from the start) containing `needle`.
    pub fn wait_for_nth_line(&mut self, needle: &str, n: usize) -> String {
        loop {
            let seen: Vec<&String> = self.log.iter().filter(|l| l.contains(needle)).collect();
            if let Some(line) = seen.get(n - 1) {
                return (*line).clone();
            }
            let line = self.lines.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!("no log line {n} with {needle:?}; log: {:#?}", self.log)
            });
            self.log.push(line);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (after a signal) and returns its status; a watchdog
    /// kills it (failing the test) if that takes longer than PATIENCE.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let (done, watch) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let expired = watch.recv_timeout(PATIENCE).is_err();
            if expired {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            expired
        });
        let status = self.child.wait().expect("wait for gateway");
        let _ = done.send(());
        assert!(!watchdog.join().unwrap(), "gateway did not exit in time");
        status
    }

    /// Peak resident set size of the gateway process, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to gateway");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl TempFile {
    pub fn new(ext: &str, contents: &[u8]) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringgate-test-{}-{}.{ext}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The head, as received.
    pub head: String,
    /// The body after de-chunking (kept only up to 1 MiB).
    pub body: Vec<u8>,
    pub body_len: u64,
    /// FNV-1a of the whole body, so large bodies can be compared without keeping them.
    pub body_hash: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

pub fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}
pub const FNV_START: u64 = 0xcbf29ce484222325;

/// What an upstream does with each request: write a response to the stream (or not), and
/// say whether to keep the connection.
pub type Handler = dyn Fn(&Seen, &mut TcpStream) -> bool + Send + Sync;

pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Receives each request as it arrives (for tests that act while one is in flight).
    pub arrivals: Mutex<Receiver<Seen>>,
}

impl Upstream {
    pub fn spawn(
        handler: impl Fn(&Seen, &mut TcpStream) -> bool + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let handler: Arc<Handler> = Arc::new(handler);
        let (c, s) = (Arc::clone(&connections), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, tx) = (Arc::clone(&handler), Arc::clone(&s), tx.clone());
                std::thread::spawn(move || {
                    let mut reader =
                        BufReader::with_capacity(64 * 1024, stream.try_clone().unwrap());
                    while let Some(request) = read_request(&mut reader) {
                        seen.lock().unwrap().push(request.clone());
                        let _ = tx.send(request.clone());
                        if !handler(&request, &mut stream) {
                            break;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            connections,
            seen,
            arrivals: Mutex::new(rx),
        }
    }

    /// An upstream answering every request with 200 and a small fixed body.
    pub fn ok(body: &'static str) -> Upstream {
        Upstream::spawn(move |_, s| {
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Upstream: yes\r\n\r\n{body}",
                body.len()
            );
            s.write_all(r.as_bytes()).is_ok()
        })
    }

    /// An upstream that switches every connection to WebSocket (101) and then echoes what
    /// it reads until the peer closes.
    pub fn websocket_echo() -> Upstream {
        Upstream::spawn(|_, s| {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return false;
                        }
                    }
                }
            }
        })
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn next_arrival(&self) -> Seen {
        self.arrivals
            .lock()
            .unwrap()
            .recv_timeout(PATIENCE)
            .expect("a request at the upstream")
    }
}

/// Reads one request (head, and a Content-Length or chunked body) with a plain, independent
/// parser; None at EOF or on anything unexpected.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut seen = Seen {
        head,
        body: Vec::new(),
        body_len: 0,
        body_hash: FNV_START,
    };
    let take = |r: &mut BufReader<TcpStream>, mut n: u64, seen: &mut Seen| -> Option<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while n > 0 {
            let want = buf.len().min(n as usize);
            r.read_exact(&mut buf[..want]).ok()?;
            seen.body_hash = fnv(seen.body_hash, &buf[..want]);
            if seen.body.len() < 1 << 20 {
                seen.body.extend_from_slice(&buf[..want]);
            }
            seen.body_len += want as u64;
            n -= want as u64;
        }
        Some(())
    };
    if let Some(cl) = seen.header("content-length") {
        let n: u64 = cl.parse().ok()?;
        take(r, n, &mut seen)?;
    } else if seen
        .header("transfer-encoding")
        .is_some_and(|te| te.ends_with("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = u64::from_str_radix(size.trim_end().split(';').next()?, 16).ok()?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).ok()?;
                break;
            }
            take(r, n, &mut seen)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).ok()?;
        }
    }
    Some(seen)
}

/// Reads one response from a client socket (plain, or a TLS client stream): (status, head,
/// body). Handles Content-Length, chunked and close-delimited bodies.
pub fn read_response<R: Read>(r: &mut BufReader<R>) -> (u16, String, Vec<u8>) {
    let mut status_line = String::new();
    let n = r.read_line(&mut status_line).expect("read response head");
    assert!(n > 0, "connection closed before a response");
    finish_response(r, status_line)
}

/// The rest of a response whose status line was already read.
pub fn finish_response<R: Read>(
    r: &mut BufReader<R>,
    status_line: String,
) -> (u16, String, Vec<u8>) {
    let mut head = status_line;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read response head");
        assert!(
            n > 0,
            "connection closed inside a response head; got {head:?}"
        );
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status: u16 = head[9..12].parse().expect("status");
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if status == 204 || status == 304 || (100..200).contains(&status) {
    } else if let Some(cl) = header("content-length") {
        body.resize(cl.parse().unwrap(), 0);
        r.read_exact(&mut body).expect("body");
    } else if header("transfer-encoding").is_some() {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim_end(), 16).expect("chunk size");
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    (status, head, body)
}

/// Sends raw bytes on a new connection and reads one response.
pub fn exchange(gw: &Gateway, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = gw.connect();
    s.write_all(raw).unwrap();
    read_response(&mut BufReader::new(s))
}

/// Whether the peer closed the connection (read returns 0) within PATIENCE.
pub fn closed(r: &mut impl Read) -> bool {
    let mut byte = [0u8; 1];
    matches!(r.read(&mut byte), Ok(0))
}

/// One GET on `r`'s stream (plain or TLS): (status, head, body).
pub fn get_on<S: Read + Write>(r: &mut BufReader<S>, path: &str) -> (u16, String, Vec<u8>) {
    write!(
        r.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: api.example\r\n\r\n"
    )
    .unwrap();
    r.get_mut().flush().unwrap();
    read_response(r)
}

/// The admin listener's /metrics as `name{labels}` → value.
pub fn scrape(admin: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (_, _, body) = read_response(&mut BufReader::new(s));
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Runs each scenario on both drivers: `mod name { io_uring, epoll }`, the scenario taking the
/// driver's name for `server.driver`.
#[allow(unused_macros)]
macro_rules! on_both_drivers {
    ($($name:ident($driver:ident) $body:block)*) => {$(
        mod $name {
            use super::*;
            fn scenario($driver: &str) $body
            #[test]
            fn io_uring() { scenario("io_uring") }
            #[test]
            fn epoll() { scenario("epoll") }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both_drivers;
