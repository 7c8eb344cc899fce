//! Forwarding a request upstream: target choice, the breaker, pooled or new connections,
//! retries and their budget, and what a failure tells the client. One attempt's exchange is
//! `exchange`'s.

use super::*;
use crate::tls::session::Session;

pub(super) struct ForwardCtx<'a> {
    pub(super) up: &'a UpstreamConfig,
    /// This worker's state of the upstream: balancer, health, breaker, budget.
    pub(super) state: &'a UpstreamState,
    pub(super) keep_alive: bool,
    pub(super) max_body: u64,
    pub(super) client_timeout: Duration,
    pub(super) limits: Limits,
    /// A cache miss: store the response under this key if the cache admits it.
    pub(super) capture: Option<Capture<'a>>,
    /// The route's access rules, for the response's header edits.
    pub(super) policy: Option<&'a RoutePolicy>,
}

#[derive(Clone, Copy)]
pub(super) struct Capture<'a> {
    pub(super) key: Key,
    pub(super) ttl: Option<Duration>,
    pub(super) max_object: u64,
    pub(super) settings: &'a CacheSettings,
}

/// How one forwarding attempt failed.
pub(super) enum Failure {
    /// Nothing reached the client yet: answer with this error.
    Before(Error),
    /// A reused connection turned out dead before any response byte: safe to try again if
    /// the request may be repeated.
    Stale,
    /// The upstream answered with a status the retry policy retries, and the budget granted
    /// the retry: its response was dropped unread.
    Retry(u16),
    /// The circuit breaker refused a connection: 503 with Retry-After.
    Overloaded(Limit),
    /// The response had started (or the client failed): only closing is left.
    After(Error),
}

impl Failure {
    /// The retry condition (`retries.on`) this failure meets, if any.
    fn condition(&self) -> Option<Condition> {
        match self {
            // Nothing of the request left the gateway before a failed TLS handshake either.
            Failure::Before(
                Error::UpstreamRefused | Error::UpstreamConnectTimeout | Error::UpstreamTls,
            ) => Some(Condition::ConnectFailure),
            Failure::Before(Error::UpstreamClosed | Error::UpstreamIo) | Failure::Stale => {
                Some(Condition::Reset)
            }
            Failure::Before(Error::UpstreamTimeout) => Some(Condition::Timeout),
            _ => None,
        }
    }

    /// Whether the target is to blame (for passive health and its latency average).
    fn blames_target(&self) -> bool {
        match self {
            Failure::Before(e) | Failure::After(e) => matches!(
                e,
                Error::UpstreamRefused
                    | Error::UpstreamConnectTimeout
                    | Error::UpstreamTimeout
                    | Error::UpstreamClosed
                    | Error::UpstreamIo
                    | Error::UpstreamTls
                    | Error::UpstreamProtocol(_)
            ),
            Failure::Retry(_) => true,
            Failure::Stale | Failure::Overloaded(_) => false,
        }
    }
}

/// The conditions of `retries.on` that are not a status.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Condition {
    ConnectFailure,
    Reset,
    Timeout,
}

impl Condition {
    fn listed(self, on: &RetryOn) -> bool {
        match self {
            Condition::ConnectFailure => on.connect_failure,
            Condition::Reset => on.reset,
            Condition::Timeout => on.timeout,
        }
    }
}

/// What a breaker's 503 tells the client: come back in a second.
pub(super) const RETRY_AFTER: &[u8] = b"Retry-After: 1\r\n";

/// The consistent-hash key of a request (0 for other policies, which ignore it).
pub(super) fn balance_key(up: &UpstreamConfig, c: &ClientSide<'_>) -> u64 {
    let Balance::ConsistentHash(by) = &up.balance else {
        return 0;
    };
    let buf = c.wire.data();
    let bytes = match by {
        HashKey::ClientIp => c.addr,
        HashKey::Header(name) => c.head.fields.get(buf, name.as_bytes()).unwrap_or_default(),
        HashKey::Path => {
            let path = c.head.path.of(buf);
            path.split(|&b| b == b'?').next().unwrap_or_default()
        }
    };
    key_hash(bytes)
}

/// Sends the request (head in `s.out`) upstream and relays the response: picks a target,
/// takes a pooled connection or opens one, and tries again where the retry policy (or a
/// stale pooled connection) allows.
///
/// Retries: a stale pooled connection (closed by the upstream while idle) is retried once on
/// a fresh connection, as before and outside the retry policy (it is no failure of the
/// target, and is counted in `ringgate_upstream_retries_total`, not in the budget). Policy
/// retries (`retries`) go to another target where one is left, up to `attempts` in all, each
/// granted by the upstream's retry budget. A connect failure may be retried for any request
/// (nothing of it left the gateway); other failures only for an idempotent method whose body
/// is empty or small enough to have gone out with the head (it is kept for the next try).
pub(super) async fn forward(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    ctx: &ForwardCtx<'_>,
) -> Next {
    let head = c.head;
    let framing = head.framing();
    if let Framing::Length(n) = framing {
        if n > ctx.max_body {
            return reject(w, c, s, Error::BodyTooLarge, ctx.max_body).await;
        }
    }
    let up = ctx.state;
    // A protocol switch relays raw bytes to the upstream, which a TLS upstream's session
    // cannot do (the tunnel encrypts one side only).
    if ctx.up.tls.is_some() && head.wants_upgrade() {
        return refuse_upgrade(w, c, s, ctx).await;
    }
    let tls_tag = ctx.up.tls.as_ref().map_or(0, |t| t.tag);
    // Circuit breaker: requests in flight to this upstream from this worker.
    let _request = match up.admit() {
        Ok(slot) => slot,
        Err(limit) => return overloaded(w, c, s, ctx, limit).await,
    };
    let method = head.method;
    let version = head.version;
    let expect_continue = head.fields.expect_continue;
    let tunnel = head.wants_upgrade();
    let key = balance_key(ctx.up, &c);
    // A cache miss keeps its head for the admission check, and tells concurrent misses for
    // the same URL to wait for this fetch.
    let _fetch = ctx.capture.map(|cap| {
        s.request.clear();
        s.request
            .extend_from_slice(c.wire.data().get(..head.len).unwrap_or_default());
        w.begin_fetch(cap.key)
    });
    c.wire.consume(head.len);
    // A small body that is already here goes out with the head in one write (one send
    // instead of two: the kernel's share of a proxied POST is most of its cost), and stays
    // in `s.out` for another attempt.
    let mut body_inline = false;
    if let Framing::Length(n) = framing {
        let here = c.wire.data();
        if n > 0 && n <= 16 * 1024 && !expect_continue && here.len() as u64 >= n {
            s.out
                .extend_from_slice(here.get(..n as usize).unwrap_or_default());
            c.wire.consume(n as usize);
            body_inline = true;
        }
    }
    // A request may go out twice only if repeating it is harmless and all of it is still
    // at hand.
    let repeatable = method.is_idempotent() && (framing == Framing::Length(0) || body_inline);
    let policy = ctx.up.retries.as_ref();
    let deadline = ctx.up.timeout.map(|t| w.recent() + t);
    if policy.is_some() {
        up.count_request(w.recent());
    }
    let mut attempt = 1;
    let mut tried = Tried::default();
    let mut tried_fresh = false;
    let result = loop {
        // The first attempt starts with the request (its clock read is recent); a later
        // one after a failure that may have taken a timeout.
        let now = if attempt == 1 && !tried_fresh {
            w.recent()
        } else {
            w.now()
        };
        let Some((index, target)) = up
            .pick(key, tried, now)
            .and_then(|i| Some((i, up.target(i)?)))
        else {
            break Err(Failure::Before(Error::UpstreamRefused));
        };
        let addr = target.addr;
        let per_try = policy.and_then(|p| p.per_try_timeout).map(|t| now + t);
        let try_deadline = match (deadline, per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Circuit breaker: connections carrying a request.
        let _connection = if up.limits_connections() {
            let bound = try_deadline.unwrap_or(now + ctx.up.connect_timeout);
            match monoio::time::timeout_at(bound.into(), up.connection()).await {
                Ok(Ok(slot)) => slot,
                Ok(Err(limit)) => break Err(Failure::Overloaded(limit)),
                Err(_) => break Err(Failure::Overloaded(up.refuse(Limit::MaxConnections))),
            }
        } else {
            None
        };
        let _in_flight = up.begin(index);
        let pooled = if tried_fresh {
            None
        } else {
            w.pool.take(addr, tls_tag, ctx.up.idle_timeout, w.recent())
        };
        let opened = match pooled {
            Some(conn) => {
                Metrics::add(&w.metrics.upstream_reused);
                Ok(conn)
            }
            None => {
                let limit = try_deadline.map_or(ctx.up.connect_timeout, |d| {
                    d.saturating_duration_since(now).min(ctx.up.connect_timeout)
                });
                open(w, ctx, addr, limit).await.map(|wire| {
                    // Deadlines and the upstream time count from here, not from the request.
                    w.now();
                    Metrics::add(&w.metrics.upstream_connects);
                    Box::new(Upstream {
                        wire,
                        target: addr,
                        tls: tls_tag,
                        requests: 0,
                        reused: false,
                    })
                })
            }
        };
        let retry_status =
            policy.is_some_and(|p| !p.on.statuses.is_empty() && repeatable && attempt < p.attempts);
        let (outcome, conn) = match opened {
            Err(e) => (Err(Failure::Before(e)), None),
            Ok(mut conn) => {
                let req = Request {
                    method,
                    version,
                    framing,
                    expect_continue,
                    tunnel,
                    body_inline,
                    try_deadline,
                    retry_status,
                };
                let outcome = exchange(w, c.wire, head, &mut conn, s, ctx, req).await;
                (outcome, Some(conn))
            }
        };
        if up.records_outcomes() {
            let verdict = match &outcome {
                Ok(_) if s.served.status < 500 => {
                    Some(Attempt::Success(s.served.upstream_time.unwrap_or_default()))
                }
                Ok(_) => Some(Attempt::Failure),
                Err(f) => f.blames_target().then_some(Attempt::Failure),
            };
            if let Some(ejected) = verdict.and_then(|v| up.record(index, v, w.recent())) {
                tracing::warn!(worker = w.id, upstream = %ctx.up.name, target = %addr, ejected_for = ?ejected, "outlier detection: target ejected");
            }
        }
        let failure = match (outcome, conn) {
            (Ok(Outcome::Reusable), Some(conn)) => {
                w.pool.put(conn, ctx.up.max_idle, w.recent());
                break Ok(None);
            }
            (Ok(Outcome::Tunnel), Some(conn)) => break Ok(Some(conn.wire)),
            (Ok(_), _) => break Ok(None),
            (Err(Failure::Stale), _) if repeatable && !tried_fresh => {
                Metrics::add(&w.metrics.upstream_retries);
                tried_fresh = true;
                continue;
            }
            (Err(Failure::Retry(status)), _) => {
                tracing::debug!(worker = w.id, upstream = %ctx.up.name, target = %addr, status, "retrying on another target");
                tried.add(index);
                attempt += 1;
                continue;
            }
            // A second stale connection, or one that may not be repeated: the upstream
            // closed the connection.
            (Err(Failure::Stale), _) => Failure::Before(Error::UpstreamClosed),
            (Err(other), _) => other,
        };
        let retry = match (policy, failure.condition()) {
            (Some(p), Some(condition)) => {
                condition.listed(&p.on)
                    && attempt < p.attempts
                    && (repeatable || condition == Condition::ConnectFailure)
                    && deadline.is_none_or(|d| w.now() < d)
                    && up.try_retry(w.recent())
            }
            _ => false,
        };
        if !retry {
            break Err(failure);
        }
        tracing::debug!(worker = w.id, upstream = %ctx.up.name, target = %addr, "retrying on another target");
        tried.add(index);
        attempt += 1;
    };
    match result {
        Ok(Some(upstream)) => Next::Tunnel(upstream),
        Ok(None) if ctx.keep_alive && !w.drain.is_draining() => Next::KeepAlive,
        Ok(None) => Next::Close,
        Err(Failure::Before(e)) => {
            w.metrics.upstream_error(&ctx.up.name, e.label());
            tracing::warn!(worker = w.id, status = e.status(), reason = e.label(), upstream = %ctx.up.name, "upstream exchange failed");
            fail(w, c.wire, s, e, b"").await
        }
        Err(Failure::Overloaded(limit)) => {
            w.metrics.error(Error::BreakerOpen.label());
            tracing::info!(worker = w.id, upstream = %ctx.up.name, limit = limit.label(), "circuit breaker open: 503");
            fail(w, c.wire, s, Error::BreakerOpen, RETRY_AFTER).await
        }
        Err(Failure::After(e)) if e.side() == Side::Upstream => {
            w.metrics.upstream_error(&ctx.up.name, e.label());
            tracing::warn!(worker = w.id, reason = e.label(), upstream = %ctx.up.name, "exchange aborted after the response started; closing");
            Next::Close
        }
        Err(Failure::After(e)) => {
            w.metrics.error(e.label());
            tracing::warn!(worker = w.id, reason = e.label(), upstream = %ctx.up.name, "exchange aborted after the response started; closing");
            Next::Close
        }
        // Both are turned into a retry or a plain failure inside the loop.
        Err(Failure::Stale | Failure::Retry(_)) => Next::Close,
    }
}

/// Answers a request whose head (and maybe body) already left the client buffer with the
/// error's status and `extra` header lines (the caller counts the error), and closes.
pub(super) async fn fail(
    w: &Worker,
    client: &mut Wire,
    s: &mut Scratch,
    e: Error,
    extra: &[u8],
) -> Next {
    s.chunk.clear();
    encode::error_body(&mut s.chunk, e.status());
    s.out.clear();
    encode::generated(
        &mut s.out,
        &Generated {
            status: e.status(),
            content_type: b"text/plain",
            body: &s.chunk,
            extra,
            keep_alive: false,
            client_version: Version::Http11,
            head_only: false,
            ready: None,
        },
    );
    let (_, buf) = client.send(std::mem::take(&mut s.out)).await;
    s.out = buf;
    w.metrics.response(e.status());
    s.served.status = e.status();
    s.served.bytes = s.chunk.len() as u64;
    Next::Close
}

/// The breaker refused a request before anything of it was read: 503 with Retry-After at
/// once, counted and logged; the connection stays open when the request's body can be
/// skipped.
pub(super) async fn overloaded(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    ctx: &ForwardCtx<'_>,
    limit: Limit,
) -> Next {
    let e = Error::BreakerOpen;
    w.metrics.error(e.label());
    tracing::info!(worker = w.id, upstream = %ctx.up.name, limit = limit.label(), "circuit breaker open: 503");
    s.extra.extend_from_slice(RETRY_AFTER);
    answer_error(w, c, s, e, ctx.keep_alive, ctx.max_body).await
}

/// A new connection to `target` within `limit`: TCP, then, for a TLS upstream, the verified
/// handshake (both within the one limit). A failed handshake is logged with its reason.
async fn open(
    w: &Worker,
    ctx: &ForwardCtx<'_>,
    target: SocketAddr,
    limit: Duration,
) -> Result<Wire, Error> {
    let Some(tls) = &ctx.up.tls else {
        return connect(target, limit)
            .await
            .map(|s| Wire::new(s, Wire::CAPACITY, w.direct_sends()));
    };
    let began = std::time::Instant::now();
    let stream = connect(target, limit).await?;
    let session = match Session::client(tls, target) {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(worker = w.id, upstream = %ctx.up.name, %target, error = %e, "upstream TLS session refused by rustls");
            return Err(Error::UpstreamTls);
        }
    };
    let mut wire = Wire::with_tls(stream, Wire::CAPACITY, session);
    let left = limit.saturating_sub(began.elapsed());
    match monoio::time::timeout(left, wire.handshake()).await {
        Ok(Ok(())) => Ok(wire),
        Ok(Err(reason)) => {
            tracing::warn!(worker = w.id, upstream = %ctx.up.name, %target, reason, "upstream TLS handshake failed");
            Err(Error::UpstreamTls)
        }
        Err(_) => Err(Error::UpstreamConnectTimeout),
    }
}

/// An upgrade (WebSocket) request to a TLS upstream: 502, counted and logged, and the
/// connection closes (the request's body was not read).
async fn refuse_upgrade(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    ctx: &ForwardCtx<'_>,
) -> Next {
    let e = Error::UpstreamTls;
    w.metrics.upstream_error(&ctx.up.name, e.label());
    tracing::warn!(worker = w.id, upstream = %ctx.up.name, "protocol upgrade to a TLS upstream is not supported: 502");
    c.wire.consume(c.head.len);
    fail(w, c.wire, s, e, b"").await
}

pub(super) async fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    match monoio::time::timeout(timeout, TcpStream::connect(target)).await {
        Err(_) => Err(Error::UpstreamConnectTimeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(Error::UpstreamConnectTimeout),
        Ok(Err(_)) => Err(Error::UpstreamRefused),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}
