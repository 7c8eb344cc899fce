//! One client connection: admit a head, hand it to the pipeline, repeat while keep-alive
//! holds; answer broken heads with their status and close; splice tunnels.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::error::Error;
use crate::http::{encode, RequestHead};
use crate::proxy::{self, Admit, ClientSide, Next, Scratch};
use crate::wire::Wire;
use crate::worker::Worker;

/// Serves one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _open = w.drain.open();
    let conn_id = w.next_conn_id();
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
    loop {
        let admitted = proxy::admit(
            &w,
            &mut client,
            &mut head,
            conn_id,
            &limits,
            header_timeout,
            keepalive,
        )
        .await;
        match admitted {
            Admit::Head => {}
            Admit::Closed => return,
            Admit::Reject(e) => return refuse(&w, &mut client, e).await,
        }
        let side = ClientSide {
            wire: &mut client,
            head: &head,
            addr: &addr,
        };
        match proxy::handle(&w, side, &mut scratch).await {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Tunnel(upstream) => return tunnel(client, upstream).await,
        }
    }
}

/// A head we will not process: its status, a close, a counter and a log line.
async fn refuse(w: &Worker, client: &mut Wire, e: Error) {
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
