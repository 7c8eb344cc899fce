//! One attempt on one upstream connection: the request head and body up, the response head
//! back and relayed to the client, and the response captured for the cache when asked.

use std::pin::pin;

use super::*;

/// The facts of the client's request an attempt needs after its head left the buffer.
#[derive(Clone, Copy)]
pub(super) struct Request {
    pub(super) method: Method,
    pub(super) version: Version,
    pub(super) framing: Framing,
    pub(super) expect_continue: bool,
    pub(super) tunnel: bool,
    /// The body is in `s.out` after the head (nothing left to relay from the client).
    pub(super) body_inline: bool,
    /// The attempt's deadline for its response head (`per_try_timeout`, `timeout`).
    pub(super) try_deadline: Option<Instant>,
    /// A response with a status in `retries.on` may be dropped for a retry.
    pub(super) retry_status: bool,
}

pub(super) enum Outcome {
    /// Response relayed; the upstream connection may serve another request.
    Reusable,
    /// Response relayed; the upstream connection is spent.
    Done,
    /// 101 relayed; the connection becomes a tunnel.
    Tunnel,
}

/// One attempt on one upstream connection: head and body up, response back.
pub(super) async fn exchange(
    w: &Worker,
    client: &mut Wire,
    head: &RequestHead,
    conn: &mut Upstream,
    s: &mut Scratch,
    ctx: &ForwardCtx<'_>,
    req: Request,
) -> Result<Outcome, Failure> {
    conn.requests += 1;
    let stale = |reused: bool, e: Error| {
        if reused {
            Failure::Stale
        } else {
            Failure::Before(e)
        }
    };
    // The head (with a small body) goes out by value and comes back unchanged, ready for a
    // retry.
    // The request started (and a fresh connection was made) moments ago: no clock read.
    let sent_at = w.recent();
    let (res, buf) = conn.wire.send(std::mem::take(&mut s.out)).await;
    s.out = buf;
    if res.is_err() {
        return Err(stale(conn.reused, Error::UpstreamIo));
    }
    // The first wait for the response counts from the request's start, the clock read last,
    // unless a streamed body took its time.
    let mut wait_from = Some(sent_at);
    if req.framing != Framing::Length(0) && !req.body_inline {
        if req.expect_continue {
            client
                .send_static(encode::CONTINUE)
                .await
                .map_err(|_| Failure::After(Error::ClientClosed))?;
        }
        let reframe = match req.framing {
            Framing::Chunked => Reframe::Chunked,
            _ => Reframe::Raw,
        };
        let limits = Relay {
            framing: req.framing,
            reframe,
            read_timeout: ctx.client_timeout,
            max: Some(ctx.max_body),
            limits: ctx.limits,
            stop_at_end: true,
        };
        relay(
            client,
            &mut conn.wire,
            &mut s.chunk,
            &limits,
            (&mut None, 0),
            &w.buffers,
        )
        .await
        .map_err(|e| match e {
            RelayError::TooLarge => Failure::Before(Error::BodyTooLarge),
            RelayError::Write => Failure::Before(Error::UpstreamIo),
            RelayError::Parse(p) => Failure::Before(Error::Request(p)),
            RelayError::Timeout | RelayError::Read | RelayError::Truncated => {
                Failure::After(Error::ClientClosed)
            }
        })?;
        wait_from = Some(w.now());
    }

    // The response head; informational responses other than 101 are passed on and skipped.
    let response = &mut s.response;
    loop {
        let mut got_any = !conn.wire.data().is_empty();
        loop {
            if !conn.wire.data().is_empty() {
                match response.parse(conn.wire.data(), &ctx.limits) {
                    Ok(Status::Complete(_)) => break,
                    Ok(Status::Partial) => {}
                    Err(e) => return Err(Failure::Before(Error::UpstreamProtocol(e))),
                }
            }
            // read_timeout, or the attempt's deadline if that comes first.
            let at = match wait_from.take() {
                Some(at) => at + ctx.up.read_timeout,
                None => Instant::now() + ctx.up.read_timeout,
            };
            let at = req.try_deadline.map_or(at, |d| d.min(at));
            let read = s.upstream_wait.within(at, pin!(conn.wire.fill())).await;
            match read {
                None => return Err(Failure::Before(Error::UpstreamTimeout)),
                Some(Ok(0)) | Some(Err(_))
                    if !got_any && (req.framing == Framing::Length(0) || req.body_inline) =>
                {
                    return Err(stale(conn.reused, Error::UpstreamClosed))
                }
                Some(Ok(0)) | Some(Err(_)) => return Err(Failure::Before(Error::UpstreamClosed)),
                Some(Ok(_)) => got_any = true,
            }
        }
        if response.is_informational() && response.status != 101 {
            let n = response.len;
            if req.version == Version::Http11 {
                let (from, wire) = (&mut conn.wire, &mut *client);
                wire.send_from(from, 0..n)
                    .await
                    .map_err(|_| Failure::After(Error::ClientClosed))?;
            }
            conn.wire.consume(n);
            continue;
        }
        break;
    }

    let status = response.status;
    // Retry policy: a status it lists is dropped, unread, if the budget grants a retry.
    let retried = req.retry_status
        && ctx
            .up
            .retries
            .as_ref()
            .is_some_and(|p| p.on.statuses.binary_search(&status).is_ok())
        && ctx.state.try_retry(w.recent());
    if retried {
        return Err(Failure::Retry(status));
    }
    let framing = response.framing(req.method);
    // Cache store, part 1: does the cache want this response? The body is collected as it
    // is relayed, up to max_object.
    let admitted = ctx.capture.and_then(|cap| {
        let admission = w.with_cache(cap.settings, |cache| {
            let data = conn.wire.data();
            cache.admit(&s.request, head, data, response, cap.ttl, Instant::now())
        })?;
        Some((cap, admission))
    });
    let mut captured = admitted.as_ref().map(|_| Vec::new());
    let client_http11 = req.version == Version::Http11;
    let tunnel = req.tunnel && status == 101;
    let (body, keep_client) = match framing {
        _ if !response.has_body(req.method) => (BodyOut::None, ctx.keep_alive),
        Framing::Length(n) => (BodyOut::Length(n), ctx.keep_alive),
        Framing::Chunked | Framing::Eof if client_http11 => (BodyOut::Chunked, ctx.keep_alive),
        Framing::Chunked | Framing::Eof => (BodyOut::UntilClose, false),
    };
    let omit = ctx
        .policy
        .map(|p| |name: &[u8]| p.response_headers.drops(name));
    let reply = Reply {
        body,
        keep_alive: keep_client && !w.drain.is_draining(),
        client_version: req.version,
        tunnel,
        extra: &s.extra,
        omit: omit.as_ref().map(|f| f as &Omit<'_>),
    };
    s.reply.clear();
    encode::response_head(&mut s.reply, conn.wire.data(), response, &reply);
    let upstream_keep = response.keep_alive();
    conn.wire.consume(response.len);
    w.metrics.response(status);
    s.served.status = status;
    s.served.upstream = Some(conn.target);
    // Read by the access log and by latency-aware balancing only: a clock read is 2% of a
    // proxied request's user time.
    if ctx.state.records_outcomes() || w.log.borrow().is_some() {
        s.served.upstream_time = Some(w.now().saturating_duration_since(sent_at));
    }
    if ctx.capture.is_some() {
        s.served.cache = "MISS";
    }

    // A small body that is already here goes out with the head in one write.
    let mut rest = framing;
    if let Framing::Length(n) = framing {
        if body != BodyOut::None && n <= 16 * 1024 && conn.wire.data().len() as u64 >= n {
            s.served.bytes = n;
            let n = n as usize;
            let body = conn.wire.data().get(..n).unwrap_or_default();
            s.reply.extend_from_slice(body);
            if let Some(captured) = captured.as_mut() {
                captured.extend_from_slice(body);
            }
            conn.wire.consume(n);
            rest = Framing::Length(0);
        }
    }
    let (res, buf) = client.send(std::mem::take(&mut s.reply)).await;
    s.reply = buf;
    res.map_err(|_| Failure::After(Error::ClientClosed))?;
    if tunnel {
        return Ok(Outcome::Tunnel);
    }
    if body != BodyOut::None && rest != Framing::Length(0) {
        let relay_cfg = Relay {
            framing: rest,
            reframe: match body {
                BodyOut::Chunked => Reframe::Chunked,
                _ => Reframe::Raw,
            },
            read_timeout: ctx.up.read_timeout,
            max: None,
            limits: ctx.limits,
            stop_at_end: false,
        };
        let keep = admitted.as_ref().map_or(0, |(cap, _)| cap.max_object);
        s.served.bytes = relay(
            &mut conn.wire,
            client,
            &mut s.chunk,
            &relay_cfg,
            (&mut captured, keep),
            &w.buffers,
        )
        .await
        .map_err(|e| match e {
            RelayError::Write => Failure::After(Error::ClientClosed),
            RelayError::Timeout => Failure::After(Error::UpstreamTimeout),
            RelayError::Parse(p) => Failure::After(Error::UpstreamProtocol(p)),
            _ => Failure::After(Error::UpstreamClosed),
        })?;
    }
    // Cache store, part 2: the whole body arrived.
    if let (Some((cap, admission)), Some(body)) = (admitted, captured) {
        w.with_cache(cap.settings, |cache| {
            cache.store(cap.key, admission, body.into(), Instant::now())
        });
    }
    let reusable = upstream_keep
        && framing != Framing::Eof
        && conn.wire.data().is_empty()
        && conn.requests < ctx.up.max_requests;
    Ok(if reusable {
        Outcome::Reusable
    } else {
        Outcome::Done
    })
}
