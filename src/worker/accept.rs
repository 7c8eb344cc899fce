//! The accept loop of one listener in one worker: admits connections up to
//! `server.max_connections`, closes (and counts) the rest, and stops when the drain starts.

use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::metrics::Metrics;
use crate::worker::{conn, Worker};

/// `waiter` identifies this loop among the worker's drain waiters (connection ids count up
/// from 1, so loops take ids from the top).
pub async fn accept_loop(
    w: Rc<Worker>,
    listener: TcpListener,
    max_connections: usize,
    waiter: u64,
) {
    loop {
        // Biased: a connection already accepted is served (it gets `Connection: close`)
        // rather than dropped when the drain starts at the same moment.
        let accepted = monoio::select! {
            biased;
            a = listener.accept() => a,
            _ = w.drain.started(waiter) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                Metrics::add(&w.metrics.connections);
                if w.drain.connections() >= max_connections {
                    Metrics::add(&w.metrics.connections_refused);
                    tracing::warn!(worker = w.id, %peer, max_connections, "connection refused: worker at max_connections");
                    drop(stream);
                    continue;
                }
                monoio::spawn(conn::serve(Rc::clone(&w), stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: the listener stays valid, but retrying at once would spin
                // until a descriptor frees up; back off briefly, as nginx does.
                tracing::warn!(worker = w.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
