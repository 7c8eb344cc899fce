//! Operating the running gateway: sd_notify states for a `Type=notify` unit, reloads that
//! move traffic without failing a request, and a broken reload that changes nothing.

#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use gateway::{exchange, read_response, Gateway, TempFile, Upstream, PATIENCE};

/// One route to `upstream`, on the given listen address (after the first start, the port the
/// gateway got, so a reload keeps it).
fn config(listen: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
workers = 2
pin = false

[upstreams.backend]
targets = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "backend"
"#
    )
}

#[test]
fn sd_notify_ready_reloading_stopping() {
    let socket_file = TempFile::new("sock", b"");
    std::fs::remove_file(&socket_file.path).unwrap();
    let systemd = UnixDatagram::bind(&socket_file.path).unwrap();
    systemd.set_read_timeout(Some(PATIENCE)).unwrap();
    let recv = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let up = Upstream::ok("x");
    let path = socket_file.path.to_str().unwrap();
    let mut gw = Gateway::start_with_env(&config("{listen}", up.addr), &[("NOTIFY_SOCKET", path)]);
    assert_eq!(recv(), "READY=1");
    gw.signal("HUP");
    let reloading = recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(recv(), "READY=1");
    gw.signal("TERM");
    assert_eq!(recv(), "STOPPING=1");
    assert!(gw.wait_exit().success());
}

#[test]
fn watchdog_pings_while_workers_answer() {
    let socket_file = TempFile::new("sock", b"");
    std::fs::remove_file(&socket_file.path).unwrap();
    let systemd = UnixDatagram::bind(&socket_file.path).unwrap();
    systemd.set_read_timeout(Some(PATIENCE)).unwrap();
    let up = Upstream::ok("x");
    let path = socket_file.path.to_str().unwrap();
    let env = [("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "200000")];
    let _gw = Gateway::start_with_env(&config("{listen}", up.addr), &env);
    let mut buf = [0u8; 256];
    let mut states = Vec::new();
    while states.iter().filter(|s| *s == "WATCHDOG=1").count() < 3 {
        let n = systemd.recv(&mut buf).expect("notifications");
        states.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(states[0], "READY=1", "{states:?}");
}

#[test]
fn twenty_reloads_move_traffic_without_a_failed_request() {
    let a = Upstream::ok("a");
    let b = Upstream::ok("b");
    let mut gw = Gateway::start(&config("{listen}", a.addr));
    let listen = gw.addr.to_string();
    let addr = gw.addr;

    // A steady request loop on its own keep-alive connections, counting failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            while !stop.load(Ordering::Relaxed) {
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let (status, _, _) = read_response(&mut r);
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    for i in 1..=20 {
        let (target, expect) = if i % 2 == 1 { (&b, "b") } else { (&a, "a") };
        std::fs::write(gw.config_path(), config(&listen, target.addr)).unwrap();
        gw.signal("HUP");
        gw.wait_for_nth_line("reloaded", i);
        // A new connection after the reload sees the new route at once.
        let (status, _, body) = gateway::exchange(&gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (status, body.as_slice()),
            (200, expect.as_bytes()),
            "after reload {i}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert!(!a.requests().is_empty() && !b.requests().is_empty());
}

#[test]
fn a_broken_reload_is_refused_and_traffic_keeps_flowing() {
    let up = Upstream::ok("old");
    let mut gw = Gateway::start(&config("{listen}", up.addr));
    std::fs::write(
        gw.config_path(),
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"nope\"\n",
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_line("reload failed");
    assert!(
        line.contains(":6:12:") && line.contains("routes[0].upstream"),
        "{line}"
    );
    let (status, _, body) = gateway::exchange(&gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, &b"old"[..]));
}

#[test]
fn sigterm_under_load_answers_every_request_sent_before_it() {
    let up = Upstream::ok("ok");
    let mut gw = Gateway::start(&config("{listen}", up.addr));
    let signalled = Arc::new(AtomicBool::new(false));
    let (answered, lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (warm, warmed) = std::sync::mpsc::channel::<()>();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (signalled, answered, lost) = (signalled.clone(), answered.clone(), lost.clone());
            let (addr, warm) = (gw.addr, warm.clone());
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                for i in 0..100_000 {
                    let before = !signalled.load(Ordering::SeqCst);
                    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                        assert!(!before, "the gateway closed before the signal");
                        return;
                    }
                    let mut line = String::new();
                    match std::io::BufRead::read_line(&mut r, &mut line) {
                        Ok(n) if n > 0 => {
                            let (_, head, body) = gateway::finish_response(&mut r, line);
                            assert_eq!(body, b"ok", "{head}");
                            answered.fetch_add(1, Ordering::SeqCst);
                            if head.contains("Connection: close") {
                                return;
                            }
                        }
                        // Closed without an answer: only acceptable for a request sent after
                        // the signal.
                        _ => {
                            if before {
                                lost.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                    }
                    if i == 50 {
                        let _ = warm.send(());
                    }
                }
            })
        })
        .collect();
    for _ in 0..4 {
        warmed.recv_timeout(PATIENCE).unwrap();
    }
    signalled.store(true, Ordering::SeqCst);
    gw.signal("TERM");
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        lost.load(Ordering::SeqCst),
        0,
        "requests sent before SIGTERM went unanswered"
    );
    assert!(answered.load(Ordering::SeqCst) >= 200);
    assert!(gw.wait_exit().success());
}

/// Starts the gateway the way systemd does for a socket-activated service: `listener` as
/// descriptor 3, `LISTEN_FDS=1` and `LISTEN_PID` set to the gateway's own pid. Returns the
/// child (the caller waits for it) and its stderr lines.
#[allow(clippy::zombie_processes)] // the child is handed to the caller, which reaps it
fn start_activated(
    listener: &std::net::TcpListener,
    config: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let script = format!(
        "export LISTEN_PID=$$ LISTEN_FDS=1; exec {} run --config {}",
        env!("CARGO_BIN_EXE_ringgate"),
        config.display()
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script])
        .env("RINGGATE_LOG", "info")
        .stderr(std::process::Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe; they only put the listener at
    // descriptor 3, open across exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(BufReader::new(stderr)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        if line.contains(" ready") {
            return (child, rx);
        }
        if line.is_empty() || line.contains("start-up failed") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the activated gateway did not start: {line:?}");
        }
    }
}

#[test]
fn socket_activated_restart_refuses_no_connection() {
    // The test plays systemd: it owns the listening socket across both gateway processes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Upstream::ok("ok");
    let config = TempFile::new("toml", config(&addr.to_string(), up.addr).as_bytes());
    let (mut first, _first_log) = start_activated(&listener, &config.path);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let (refused, reset) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (stop, done) = (stop.clone(), done.clone());
        let (refused, reset) = (refused.clone(), reset.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                let answered = (|| {
                    s.set_read_timeout(Some(PATIENCE)).ok()?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .ok()?;
                    let mut text = Vec::new();
                    std::io::Read::read_to_end(&mut s, &mut text).ok()?;
                    Some(text.starts_with(b"HTTP/1.1 200") && text.ends_with(b"ok"))
                })();
                if answered == Some(true) {
                    done.fetch_add(1, Ordering::SeqCst);
                } else {
                    reset.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let served_by = |n: usize| {
        let target = done.load(Ordering::SeqCst) + n;
        let deadline = std::time::Instant::now() + PATIENCE;
        while done.load(Ordering::SeqCst) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop stopped being served"
            );
            std::thread::yield_now();
        }
    };
    served_by(50);
    // Restart: the old process drains and exits, the new one takes the same socket.
    std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(first.wait().unwrap().success());
    let (mut second, _second_log) = start_activated(&listener, &config.path);
    served_by(50);
    stop.store(true, Ordering::SeqCst);
    looper.join().unwrap();
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "connections refused during the restart"
    );
    // Every connection is answered: a draining worker takes nothing from the shared backlog
    // that it will not serve (see `worker::accept::next_connection`).
    assert_eq!(
        reset.load(Ordering::SeqCst),
        0,
        "connections closed unanswered during the restart"
    );
}

/// A reload that adds a listen address starts serving it, one that removes an address stops
/// accepting there (its open connections carry on), and one whose address cannot be bound is
/// refused whole.
#[test]
fn reload_opens_and_closes_listeners() {
    let up = Upstream::ok("up");
    let mut gw = Gateway::start(&config("{listen}", up.addr));
    let first = gw.addr;
    let get = |addr: SocketAddr| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_response(&mut BufReader::new(s)).0
    };
    let mut kept = std::net::TcpStream::connect(first).unwrap();
    kept.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut kept_reader = BufReader::new(kept.try_clone().unwrap());
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut kept_reader).0, 200);

    // Add a second address (port 0: the log says which port it got).
    let both = format!("{first}\", \"127.0.0.1:0");
    std::fs::write(gw.config_path(), config(&both, up.addr)).unwrap();
    gw.signal("HUP");
    gw.wait_for_nth_line("reloaded", 1);
    let line = gw.wait_for_nth_line("listening on ", 2);
    let second: SocketAddr = line
        .rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(second, first);
    assert_eq!(get(second), 200);
    assert_eq!(get(first), 200);

    // Drop the first address: new connections there are refused, the open one still works.
    std::fs::write(gw.config_path(), config(&second.to_string(), up.addr)).unwrap();
    gw.signal("HUP");
    gw.wait_for_nth_line("reloaded", 2);
    gw.wait_for_line(&format!("stopped listening on {first}"));
    let refused = std::net::TcpStream::connect(first).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut kept_reader).0, 200);
    assert_eq!(get(second), 200);

    // An address another socket holds (without SO_REUSEPORT): the reload is refused and
    // nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("{second}\", \"{}", taken.local_addr().unwrap());
    std::fs::write(gw.config_path(), config(&busy, up.addr)).unwrap();
    gw.signal("HUP");
    let refusal = gw.wait_for_line("reload failed");
    assert!(refusal.contains("cannot listen on"), "{refusal}");
    assert_eq!(get(second), 200);
    assert!(gw.log.iter().filter(|l| l.contains("reloaded")).count() == 2);
}

/// Starts the gateway on `config` with open-file limits `soft` and `hard`.
fn start_with_nofile(config: &str, soft: u64, hard: u64) -> Gateway {
    use std::os::unix::process::CommandExt;
    Gateway::start_with_command(config, |cmd| {
        // SAFETY: setrlimit is async-signal-safe and changes only the child's limits.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// The soft and hard open-file limits the kernel reports for `pid`.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("a Max open files line");
    let mut values = line.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (values.next().unwrap(), values.next().unwrap())
}

#[test]
fn a_low_soft_open_file_limit_is_raised_to_the_hard_one_at_start() {
    let (_, ours) = nofile_of(std::process::id());
    let hard = ours.min(8192);
    assert!(
        hard > 256,
        "the test needs a hard limit above 256, has {ours}"
    );
    let up = Upstream::ok("x");
    let mut gw = start_with_nofile(&config("{listen}", up.addr), 256, hard);
    gw.wait_for_line(&format!("open-file limit raised from 256 to {hard}"));
    assert_eq!(nofile_of(gw.pid()), (hard, hard));
    let (status, _, body) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, b"x".as_slice()));
}

#[test]
fn an_open_file_limit_short_of_max_connections_is_logged_and_served_within() {
    let up = Upstream::ok("x");
    let mut gw = start_with_nofile(&config("{listen}", up.addr), 256, 256);
    // Two workers at the default 16384 connections, two descriptors each, and 64 kept aside.
    let warning = gw.wait_for_line("open-file limit below");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("limit=256"), "{warning}");
    assert!(warning.contains("needed=65600"), "{warning}");
    assert!(!gw.log.iter().any(|l| l.contains("open-file limit raised")));
    assert_eq!(nofile_of(gw.pid()), (256, 256));
    let (status, _, body) = exchange(&gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, b"x".as_slice()));
}
