//! One client connection: shake hands if it came in on a TLS listener, admit a head, hand it
//! to the pipeline, repeat while keep-alive holds; answer broken heads with their status and
//! close; splice tunnels.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::error::Error;
use std::time::Duration;

use crate::accesslog::Entry;
use crate::deadline::Deadline;
use crate::http::{encode, RequestHead, Version};
use crate::proxy::{self, Admit, ClientSide, Next, Scratch};
use crate::tls::session::{self, Session};
use crate::wire::Wire;
use crate::worker::spares::{self, Kit};
use crate::worker::Worker;

/// How long a closing TLS connection waits to hand the client its close_notify: the client
/// may have stopped reading, and the alert is a courtesy.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_millis(100);

/// Serves one accepted connection until it closes; `tls`: the listener speaks TLS.
pub async fn serve(w: Rc<Worker>, stream: TcpStream, peer: SocketAddr, tls: bool) {
    let _open = w.drain.open();
    // The first keep-alive deadline counts from here (`Worker::recent`).
    w.now();
    // Registered once for the connection, not once per idle read.
    let mut drained = w.drain.started(w.next_conn_id());
    // Likewise the timer for the client's next head: moved, not re-made, per request.
    let mut wait = Deadline::default();
    let (limits, header_timeout, keepalive, acceptor) = {
        let snap = w.snapshot();
        let server = &snap.config.server;
        (
            server.limits,
            server.header_timeout,
            server.keepalive_timeout,
            // Taken once: a reload's certificates are for the connections after it.
            if tls { snap.tls.clone() } else { None },
        )
    };
    let mut kit;
    let mut client = if tls {
        // The kit waits for the handshake: a connection that never completes one holds only
        // what the handshake needs.
        let Some(mut wire) = handshake(&w, stream, peer, acceptor, header_timeout).await else {
            return;
        };
        kit = w.spares.take(&limits);
        // The handshake read into a buffer of its own; the kit's takes its place, so that the
        // connection holds one, and the kit gets it back at the close.
        drop(wire.swap_buffer(std::mem::take(&mut kit.buf)));
        wire
    } else {
        kit = w.spares.take(&limits);
        Wire::with_buffer(stream, std::mem::take(&mut kit.buf), w.direct_sends())
    };
    let Kit {
        head,
        scratch,
        addr,
        ..
    } = &mut *kit;
    spares::write_ip(peer.ip(), addr);
    let mut pending = Pending::default();
    let mut fresh = true;
    let upgraded = loop {
        let admitted = proxy::admit(
            &w,
            &mut client,
            head,
            fresh,
            &mut drained,
            &mut wait,
            &limits,
            header_timeout,
            keepalive,
        )
        .await;
        match admitted {
            Admit::Head => {}
            Admit::Closed => break None,
            Admit::Reject(e) => {
                refuse(&w, &mut client, addr, e).await;
                break None;
            }
        }
        fresh = false;
        if !head.keep_alive() {
            client.last_answer();
        }
        let started = w.now();
        let logging = w.log.borrow().is_some();
        if logging {
            pending.capture(client.data(), head);
        }
        let side = ClientSide {
            wire: &mut client,
            head,
            addr,
            ip: peer.ip(),
        };
        let next = proxy::handle(&w, side, scratch).await;
        // Also the time the next keep-alive read's deadline counts from (`Worker::recent`).
        let took = w.now().saturating_duration_since(started);
        w.metrics.observe(took);
        let (received, sent) = client.take_counts();
        w.metrics.bytes(received, sent);
        if logging {
            pending.record(&w, addr, scratch, took);
        }
        match next {
            Next::KeepAlive => {}
            Next::Close => break None,
            Next::Tunnel(upstream) => break Some(upstream),
        }
    };
    match upgraded {
        Some(upstream) => tunnel(client, upstream).await,
        None => {
            client.close(CLOSE_NOTIFY_WAIT).await;
            if w.closes_late() {
                client.fin();
            }
            kit.buf = client.into_buffer();
        }
    }
    w.spares.give_back(kit);
}

/// Runs the TLS handshake within `header_timeout` (the slowloris bound for heads applies to
/// handshakes too); a failure is counted by reason and logged, and the connection closed.
async fn handshake(
    w: &Worker,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<crate::tls::Acceptor>,
    header_timeout: Duration,
) -> Option<Wire> {
    // Validation refuses TLS listeners without certificates; this is the instant between a
    // reload switching a listener to TLS and the snapshot with its certificates.
    let Some(acceptor) = acceptor else {
        w.metrics.tls_failure("no_certificate");
        tracing::info!(worker = w.id, %peer, "TLS connection closed: no certificate loaded");
        return None;
    };
    let session = match Session::new(&acceptor) {
        Ok(s) => s,
        Err(e) => {
            w.metrics.tls_failure("other");
            tracing::info!(worker = w.id, %peer, "TLS session not started: {e}");
            return None;
        }
    };
    let mut wire = Wire::with_tls(stream, Wire::CAPACITY, session);
    let reason = match monoio::time::timeout(header_timeout, wire.handshake()).await {
        Ok(Ok(())) => {
            w.metrics.tls_handshake(wire.resumed());
            return Some(wire);
        }
        Ok(Err(reason)) => reason,
        Err(_) => "timeout",
    };
    w.metrics.tls_failure(reason);
    // Scanners and plain-HTTP clients make these all day: not worth more than debug.
    tracing::debug!(worker = w.id, %peer, reason, "TLS handshake failed");
    None
}

/// The parts of a request its access log line needs, copied before the pipeline consumes
/// the head (only when the log is on); the buffers are reused for every request.
#[derive(Default)]
struct Pending {
    method: Vec<u8>,
    target: Vec<u8>,
    referer: Vec<u8>,
    user_agent: Vec<u8>,
    request_id: Vec<u8>,
    http10: bool,
}

impl Pending {
    fn capture(&mut self, buf: &[u8], head: &RequestHead) {
        let copy = |to: &mut Vec<u8>, from: &[u8]| {
            to.clear();
            to.extend_from_slice(from);
        };
        copy(&mut self.method, head.method_span.of(buf));
        copy(&mut self.target, head.target.of(buf));
        copy(
            &mut self.referer,
            head.fields.get(buf, b"referer").unwrap_or_default(),
        );
        copy(
            &mut self.user_agent,
            head.fields.get(buf, b"user-agent").unwrap_or_default(),
        );
        copy(
            &mut self.request_id,
            head.fields.get(buf, b"x-request-id").unwrap_or_default(),
        );
        self.http10 = head.version == Version::Http10;
    }

    fn record(&mut self, w: &Worker, client: &[u8], s: &Scratch, duration: Duration) {
        let served = &s.served;
        // The client's id, else the one sent upstream, else a new one.
        if self.request_id.is_empty() {
            if s.request_id.is_empty() {
                w.request_id(&mut self.request_id);
            } else {
                self.request_id.extend_from_slice(&s.request_id);
            }
        }
        let entry = Entry {
            client,
            method: &self.method,
            target: &self.target,
            http10: self.http10,
            status: served.status,
            bytes: served.bytes,
            duration,
            upstream: served.upstream,
            upstream_time: served.upstream_time,
            route: served.route,
            worker: w.id,
            cache: if served.cache.is_empty() {
                "-"
            } else {
                served.cache
            },
            // The client's, or the one the gateway made and sent upstream.
            request_id: &self.request_id,
            referer: &self.referer,
            user_agent: &self.user_agent,
        };
        if let Some(log) = w.log.borrow_mut().as_mut() {
            log.record(&entry);
        }
    }
}

/// A head we will not process: its status, a close, a counter, a log line and an access log
/// line (with `-` for what could not be read).
async fn refuse(w: &Worker, client: &mut Wire, addr: &[u8], e: Error) {
    w.metrics.error(e.label());
    tracing::info!(
        worker = w.id,
        status = e.status(),
        reason = e.label(),
        "request refused"
    );
    let mut out = Vec::with_capacity(256);
    encode::error(&mut out, e.status(), false);
    let _ = client.send(out).await;
    w.metrics.response(e.status());
    let (received, sent) = client.take_counts();
    w.metrics.bytes(received, sent);
    if let Some(log) = w.log.borrow_mut().as_mut() {
        log.record(&Entry {
            client: addr,
            method: b"-",
            target: b"-",
            http10: false,
            status: e.status(),
            bytes: encode::reason(e.status()).len() as u64 + 5,
            duration: Duration::ZERO,
            upstream: None,
            upstream_time: None,
            route: None,
            worker: w.id,
            cache: "-",
            request_id: b"",
            referer: b"",
            user_agent: b"",
        });
    }
}

/// Copies bytes both ways until each side has closed its half (WebSocket after a 101); a TLS
/// client goes through its session (`tls::session::tunnel`).
async fn tunnel(client: Wire, upstream: Wire) {
    let (client, client_pending, session) = client.into_parts();
    // The upstream is plain: `forward` refuses upgrades to a TLS upstream before sending.
    let (upstream, upstream_pending, _) = upstream.into_parts();
    if let Some(session) = session {
        return session::tunnel(session, client, client_pending, upstream, upstream_pending).await;
    }
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    let up = async {
        if !client_pending.is_empty() && upstream_tx.write_all(client_pending).await.0.is_err() {
            return;
        }
        let _ = monoio::io::copy(&mut client_rx, &mut upstream_tx).await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut upstream_tx).await;
    };
    let down = async {
        if !upstream_pending.is_empty() && client_tx.write_all(upstream_pending).await.0.is_err() {
            return;
        }
        let _ = monoio::io::copy(&mut upstream_rx, &mut client_tx).await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut client_tx).await;
    };
    monoio::join!(up, down);
}
