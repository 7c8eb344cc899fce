//! One client connection: admit a head, hand it to the pipeline, repeat while keep-alive
//! holds; answer broken heads with their status and close; splice tunnels.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::error::Error;
use std::time::Duration;

use crate::accesslog::Entry;
use crate::http::{encode, RequestHead, Version};
use crate::proxy::{self, Admit, ClientSide, Next, Scratch};
use crate::wire::Wire;
use crate::worker::Worker;

/// Serves one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _open = w.drain.open();
    // The first keep-alive deadline counts from here (`Worker::recent`).
    w.now();
    // Registered once for the connection, not once per idle read.
    let mut drained = w.drain.started(w.next_conn_id());
    let _ = stream.set_nodelay(true);
    let (limits, header_timeout, keepalive) = {
        let snap = w.snapshot();
        let server = &snap.config.server;
        (
            server.limits,
            server.header_timeout,
            server.keepalive_timeout,
        )
    };
    let mut client = Wire::new(stream, 16 * 1024);
    let mut head = RequestHead::new(&limits);
    let mut scratch = Scratch::new(&limits);
    let addr = peer.ip().to_string().into_bytes();
    let mut pending = Pending::default();
    let mut fresh = true;
    loop {
        let admitted = proxy::admit(
            &w,
            &mut client,
            &mut head,
            fresh,
            &mut drained,
            &limits,
            header_timeout,
            keepalive,
        )
        .await;
        match admitted {
            Admit::Head => {}
            Admit::Closed => return,
            Admit::Reject(e) => return refuse(&w, &mut client, &addr, e).await,
        }
        fresh = false;
        let started = w.now();
        let logging = w.log.borrow().is_some();
        if logging {
            pending.capture(client.data(), &head);
        }
        let side = ClientSide {
            wire: &mut client,
            head: &head,
            addr: &addr,
            ip: peer.ip(),
        };
        let next = proxy::handle(&w, side, &mut scratch).await;
        // Also the time the next keep-alive read's deadline counts from (`Worker::recent`).
        let took = w.now().saturating_duration_since(started);
        w.metrics.observe(took);
        let (received, sent) = client.take_counts();
        w.metrics.bytes(received, sent);
        if logging {
            pending.record(&w, &addr, &scratch, took);
        }
        match next {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Tunnel(upstream) => return tunnel(client, upstream).await,
        }
    }
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

    fn record(&self, w: &Worker, client: &[u8], s: &Scratch, duration: Duration) {
        let served = &s.served;
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
            request_id: if self.request_id.is_empty() {
                &s.request_id
            } else {
                &self.request_id
            },
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

/// Copies bytes both ways until each side has closed its half (WebSocket after a 101).
async fn tunnel(client: Wire, upstream: Wire) {
    let (client, client_pending) = client.into_parts();
    let (upstream, upstream_pending) = upstream.into_parts();
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
