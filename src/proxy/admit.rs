//! Admitting a request: read until a whole head is parsed, under the keep-alive, header and
//! drain rules; nothing here routes or answers.

use std::pin::pin;

use super::*;

/// How long an idle connection of a draining worker waits for a request already on its way.
pub(super) const DRAIN_LAST_READ: Duration = Duration::from_millis(2);

/// Reads until `head` holds a complete request head. On a connection that has been served
/// (`fresh` false) the first byte may take up to `keepalive`, and the drain ends the wait;
/// from then on, and on a fresh connection from the start, the whole head must arrive within
/// `header_timeout`, or the client gets 408 (slowloris). A fresh connection is served even
/// when the drain has begun: it was accepted, so its client is sending a request.
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    w: &Worker,
    client: &mut Wire,
    head: &mut RequestHead,
    fresh: bool,
    drained: &mut Started<'_>,
    wait: &mut Deadline,
    limits: &Limits,
    header_timeout: Duration,
    keepalive: Duration,
) -> Admit {
    let mut scan = HeadScan::default();
    let mut deadline: Option<Instant> = None;
    let mut parse_now = true;
    loop {
        let data = client.data();
        if !data.is_empty() {
            let ready = parse_now
                || scan.ready(data)
                || data.len() >= limits.max_head
                || (data.len() > limits.max_request_line && memchr::memchr(b'\n', data).is_none());
            if ready {
                match head.parse(data, limits) {
                    Ok(Status::Complete(_)) => return Admit::Head,
                    Ok(Status::Partial) => {}
                    Err(e) => return Admit::Reject(Error::Request(e)),
                }
            }
            parse_now = false;
            if client.is_full() {
                client.reserve(limits.max_head + 1);
            }
        }
        // A timed-out read takes the buffered bytes with it (see `Wire::fill`); it ends the
        // connection either way.
        let idle = client.data().is_empty();
        let read = if idle && deadline.is_none() && !fresh {
            if w.drain.is_draining() {
                // A request the client sent before the drain began may already wait in the
                // socket: take it (it gets `Connection: close`) rather than drop it.
                match monoio::time::timeout(DRAIN_LAST_READ, client.fill()).await {
                    Ok(Ok(1..)) => continue,
                    _ => return Admit::Closed,
                }
            }
            let read = pin!(client.fill());
            monoio::select! {
                biased;
                r = wait.within(w.recent() + keepalive, read) => r,
                _ = &mut *drained => return Admit::Closed,
            }
        } else {
            let at = *deadline.get_or_insert_with(|| Instant::now() + header_timeout);
            wait.within(at, pin!(client.fill())).await
        };
        match read {
            Some(Ok(0)) | Some(Err(_)) => return Admit::Closed,
            // The header deadline starts when a read leaves a partial head (above), not here:
            // most heads arrive whole and never need one.
            Some(Ok(_)) => {}
            None if idle => return Admit::Closed,
            None => return Admit::Reject(Error::HeaderTimeout),
        }
    }
}
