//! Active health checks: one control-plane thread for the whole process checks every target
//! of every upstream with `health`, once per `interval` (not once per worker), with plain
//! blocking sockets, and writes each verdict into the target's shared [`TargetHealth`] word,
//! which the workers read on their picks without a lock. Off the hot path: nothing here runs
//! on a worker.
//!
//! The thread follows reloads: every round reads the current snapshot, so new targets are
//! checked from their first round and removed ones are forgotten. A target's streak of passes
//! or failures is kept by (upstream name, address), so a reload that keeps a target keeps its
//! progress as well as its verdict (see `upstream::state::Shared`).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{HealthCheck, UpstreamKind};
use crate::routing::SharedSnapshot;
use crate::upstream::health::{status_of, ActiveState, TargetHealth};

/// The longest the thread sleeps between looks at the snapshot, so a reload that adds checks
/// is picked up within this time even if every check it runs is far from due.
const MAX_IDLE: Duration = Duration::from_millis(500);

/// Most bytes read looking for the end of the status line.
const MAX_STATUS_LINE: usize = 1024;

/// The checker thread; dropping this stops it (at its next wake-up).
pub struct Checker {
    _stop: mpsc::Sender<()>,
}

/// Starts the checker for whatever `snapshot` holds now and after every reload.
pub fn spawn(snapshot: Arc<SharedSnapshot>) -> io::Result<Checker> {
    let (stop, stopped) = mpsc::channel();
    std::thread::Builder::new()
        .name("ringgate-health".into())
        .spawn(move || run(&snapshot, &stopped))?;
    Ok(Checker { _stop: stop })
}

/// One target's progress between rounds.
struct Tracker {
    state: ActiveState,
    next: Instant,
}

/// A check that is due this round.
struct Due {
    upstream: String,
    addr: SocketAddr,
    check: HealthCheck,
    word: Arc<TargetHealth>,
}

fn run(snapshot: &SharedSnapshot, stopped: &mpsc::Receiver<()>) {
    let mut trackers: HashMap<(String, SocketAddr), Tracker> = HashMap::new();
    loop {
        let snap = snapshot.current();
        let now = Instant::now();
        let mut due = Vec::new();
        let mut present = HashSet::new();
        for (up, shared) in snap.config.upstreams.iter().zip(&snap.upstreams) {
            let (Some(check), UpstreamKind::Targets(addrs)) = (&up.health, &up.kind) else {
                continue;
            };
            for (addr, word) in addrs.iter().zip(&shared.health) {
                let key = (up.name.clone(), *addr);
                // A target listed twice is checked once: both entries share one word.
                if !present.insert(key.clone()) {
                    continue;
                }
                let tracker = trackers.entry(key).or_insert_with(|| Tracker {
                    state: ActiveState::new(word.is_healthy()),
                    next: now,
                });
                if tracker.next <= now {
                    due.push(Due {
                        upstream: up.name.clone(),
                        addr: *addr,
                        check: check.clone(),
                        word: Arc::clone(word),
                    });
                }
            }
        }
        trackers.retain(|key, _| present.contains(key));
        drop(snap);

        // Due checks run side by side, so one target that times out does not hold up the
        // others' verdicts by its timeout each. A round with nothing due allocates nothing
        // (a scope would): a gateway without checks keeps this thread quiet.
        let results: Vec<Result<u16, String>> = if due.is_empty() {
            Vec::new()
        } else {
            std::thread::scope(|scope| {
                let running: Vec<_> = due
                    .iter()
                    .map(|d| scope.spawn(|| probe(d.addr, &d.check)))
                    .collect();
                running
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .unwrap_or_else(|_| Err("the check panicked".into()))
                    })
                    .collect()
            })
        };
        let finished = Instant::now();
        for (d, result) in due.iter().zip(results) {
            let Some(tracker) = trackers.get_mut(&(d.upstream.clone(), d.addr)) else {
                continue;
            };
            tracker.next = finished + d.check.interval;
            let passed = matches!(result, Ok(status) if d.check.expect_status.contains(status));
            let changed = tracker
                .state
                .record(passed, d.check.healthy, d.check.unhealthy);
            match changed {
                Some(true) => {
                    d.word.set(true);
                    tracing::info!(upstream = %d.upstream, target = %d.addr, "health check: target healthy");
                }
                Some(false) => {
                    d.word.set(false);
                    let why = match &result {
                        Ok(status) => format!("status {status}"),
                        Err(e) => e.clone(),
                    };
                    tracing::warn!(upstream = %d.upstream, target = %d.addr, last = %why, "health check: target unhealthy");
                }
                None => {}
            }
        }

        let next = trackers.values().map(|t| t.next).min();
        let wait = next
            .map_or(MAX_IDLE, |at| at.saturating_duration_since(Instant::now()))
            .min(MAX_IDLE);
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One check: connect, `GET path`, read the status line; all within the check's timeout.
fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<u16, String> {
    let deadline = Instant::now() + check.timeout;
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        // A zero timeout means "none" to the socket calls.
        (!d.is_zero()).then_some(d).ok_or("timed out")
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, check.timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringgate-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    status_of(&buf).ok_or_else(|| "no HTTP status line".to_string())
}
