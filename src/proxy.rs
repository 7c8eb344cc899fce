//! THE pipeline, one request at a time on one client connection:
//!
//! `admit → route → policy → cache lookup → forward → cache store → respond → log`
//!
//! [`admit`] reads and parses the head under the header timeout; [`handle`] routes it and
//! either answers directly (a `respond` route, the built-in echo upstream, an error) or
//! forwards it: request head and body stream to a pooled upstream connection, the response
//! streams back. Policy (auth, rate limits) and the cache phases come with their issues; they
//! slot in between route and forward. Bodies are never held whole: they move through the
//! connections' fixed buffers as they arrive.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::access::cors::{self, CorsRequest, Preflight};
use crate::access::{RoutePolicy, Verdict};
use crate::cache::{Hit, Key, Lookup};
use crate::config::{
    Action, Balance, Builtin, CacheSettings, HashKey, LimitKey, RetryOn, Route,
    Upstream as UpstreamConfig, UpstreamKind,
};
use crate::error::{Error, Side};
use crate::http::encode::{self, BodyOut, Forward, Generated, Omit, Reply};
use crate::http::{
    BodyDecoder, Framing, HeadScan, Limits, Method, RequestHead, ResponseHead, Status, Version,
};
use crate::metrics::Metrics;
use crate::ratelimit::Decision;
use crate::upstream::balance::key_hash;
use crate::upstream::echo;
use crate::upstream::pool::Upstream;
use crate::upstream::state::{Attempt, Limit, Tried, UpstreamState};
use crate::wire::Wire;
use crate::worker::drain::Started;
use crate::worker::{Current, Worker};

/// How long an idle connection of a draining worker waits for a request already on its way.
const DRAIN_LAST_READ: Duration = Duration::from_millis(2);

/// What the connection does after an exchange.
pub enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols: splice the two connections together.
    Tunnel(Wire),
}

/// Outcome of waiting for a request head.
pub enum Admit {
    /// A complete head is parsed into the `RequestHead`.
    Head,
    /// The client went away, stayed idle past the keep-alive timeout, or we are draining.
    Closed,
    /// The client broke a rule or took too long: answer with the error's status and close.
    Reject(Error),
}

/// Per-connection scratch space, reused for every exchange on the connection.
pub struct Scratch {
    /// The head sent upstream, or a response the gateway makes.
    pub out: Vec<u8>,
    /// The response head (and small body) sent to the client.
    pub reply: Vec<u8>,
    /// Chunk framing, direct-response fields, rate-limit keys.
    pub chunk: Vec<u8>,
    /// Field lines the gateway adds to this exchange's response (RateLimit-*, X-Cache).
    pub extra: Vec<u8>,
    /// The request head, kept for the cache's admission check once the response arrives
    /// (the client buffer has moved on by then).
    pub request: Vec<u8>,
    /// The X-Request-Id the gateway made and sent upstream (empty when the client sent one, or
    /// the request did not go upstream).
    pub request_id: Vec<u8>,
    /// Field lines the gateway adds to the request it forwards (X-Request-Id, identity).
    pub upstream_extra: Vec<u8>,
    pub response: ResponseHead,
    /// What the exchange came to, for the access log.
    pub served: Served,
}

/// How an exchange ended, as the access log reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    pub upstream: Option<SocketAddr>,
    /// From sending the request upstream to having the response head.
    pub upstream_time: Option<Duration>,
    pub route: Option<usize>,
    /// `HIT`, `MISS`, or empty when the route does not cache.
    pub cache: &'static str,
}

impl Scratch {
    pub fn new(limits: &Limits) -> Scratch {
        Scratch {
            out: Vec::with_capacity(4096),
            reply: Vec::with_capacity(4096),
            chunk: Vec::with_capacity(16 * 1024 + 32),
            extra: Vec::with_capacity(256),
            request: Vec::new(),
            request_id: Vec::with_capacity(32),
            upstream_extra: Vec::with_capacity(256),
            served: Served::default(),
            response: ResponseHead::new(limits),
        }
    }
}

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
            monoio::select! {
                biased;
                r = monoio::time::timeout_at((w.recent() + keepalive).into(), client.fill()) => r,
                _ = &mut *drained => return Admit::Closed,
            }
        } else {
            let at = *deadline.get_or_insert_with(|| Instant::now() + header_timeout);
            monoio::time::timeout_at(at.into(), client.fill()).await
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Admit::Closed,
            // The header deadline starts when a read leaves a partial head (above), not here:
            // most heads arrive whole and never need one.
            Ok(Ok(_)) => {}
            Err(_) if idle => return Admit::Closed,
            Err(_) => return Admit::Reject(Error::HeaderTimeout),
        }
    }
}

/// Everything an exchange needs to know about its client connection.
pub struct ClientSide<'a> {
    pub wire: &'a mut Wire,
    pub head: &'a RequestHead,
    /// The client's IP in text form, for X-Forwarded-For.
    pub addr: &'a [u8],
    pub ip: IpAddr,
}

/// Routes the request whose head is parsed in `c.head` (its bytes still at the start of the
/// client buffer) and answers it.
pub async fn handle(w: &Worker, c: ClientSide<'_>, s: &mut Scratch) -> Next {
    Metrics::add(&w.metrics.requests);
    let snap = w.snapshot();
    let next = answer(w, &snap, c, s).await;
    w.metrics
        .route_response(&snap.snapshot, s.served.route, s.served.status);
    next
}

/// The pipeline for one request, on the snapshot it started with (and this worker's
/// upstream state for it).
async fn answer(w: &Worker, snap: &Current, c: ClientSide<'_>, s: &mut Scratch) -> Next {
    let server = &snap.config.server;
    let head = c.head;
    let buf = c.wire.data();
    let path = head.path.of(buf);
    let path_only = path.split(|&b| b == b'?').next().unwrap_or_default();
    let mut found = snap
        .table
        .find(head.host(buf), path_only, head.method_span.of(buf));
    if found.is_none() && head.method == Method::Options {
        // A CORS preflight asks about the method the page will use: route it by that one,
        // so a route limited to GET and POST still answers its preflights.
        if let Some(method) = head.fields.get(buf, b"access-control-request-method") {
            found = snap.table.find(head.host(buf), path_only, method);
        }
    }
    let route = found.and_then(|i| Some((i, snap.config.routes.get(i)?)));
    let keep_alive = head.keep_alive() && !w.drain.is_draining();
    s.extra.clear();
    s.served = Served::default();
    s.request_id.clear();
    s.upstream_extra.clear();
    // The global address filter comes before anything else.
    if !server.ip.permits(c.ip) {
        return reject(w, c, s, Error::IpDenied, server.max_body).await;
    }
    let Some((index, route)) = route else {
        return reject(w, c, s, Error::NoRoute, server.max_body).await;
    };
    s.served.route = Some(index);
    // Policy: the route's address filter, CORS, authentication, header edits.
    let policy = snap
        .config
        .route_policies
        .get(index)
        .filter(|p| !p.is_empty());
    if let Some(policy) = policy {
        match check_access(w, head, buf, c.ip, policy, s) {
            Access::Pass => {}
            Access::Refuse(e) => return reject(w, c, s, e, server.max_body).await,
            Access::Preflight => {
                let g = Generated {
                    status: 204,
                    content_type: b"",
                    body: b"",
                    extra: &s.extra,
                    keep_alive,
                    client_version: head.version,
                    head_only: false,
                };
                return respond_generated(w, c, (&mut s.out, &mut s.served), &g, server.max_body)
                    .await;
            }
        }
    }
    // Policy: rate limits.
    if let Some(policy) = route
        .rate_limit
        .and_then(|i| snap.config.rate_limits.get(i))
    {
        s.chunk.clear();
        match &policy.key {
            LimitKey::ClientIp => s.chunk.extend_from_slice(c.addr),
            LimitKey::Header(name) => s
                .chunk
                .extend_from_slice(head.fields.get(buf, name.as_bytes()).unwrap_or_default()),
            LimitKey::Route => s.chunk.extend_from_slice(&(index as u64).to_le_bytes()),
            LimitKey::ClientIpAndRoute => {
                s.chunk.extend_from_slice(c.addr);
                s.chunk.extend_from_slice(&(index as u64).to_le_bytes());
            }
        }
        let (decision, limit) = w.rate_check(policy, server.steer, &s.chunk);
        match decision {
            Decision::Deny { retry_after, reset } => {
                rate_headers(&mut s.extra, limit, 0, reset);
                s.extra.extend_from_slice(b"Retry-After: ");
                encode::decimal(&mut s.extra, retry_after);
                s.extra.extend_from_slice(b"\r\n");
                return reject(w, c, s, Error::RateLimited, server.max_body).await;
            }
            Decision::Allow { remaining, reset } if policy.headers => {
                rate_headers(&mut s.extra, limit, remaining, reset);
            }
            Decision::Allow { .. } => {}
        }
    }
    match &route.action {
        Action::Respond {
            status,
            body,
            headers,
        } => {
            s.chunk.clear();
            let mut content_type: &[u8] = b"text/plain; charset=utf-8";
            for (name, value) in headers {
                if name.eq_ignore_ascii_case("content-type") {
                    content_type = b"";
                }
                for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                    s.chunk.extend_from_slice(part);
                }
            }
            s.chunk.extend_from_slice(&s.extra);
            let g = Generated {
                status: *status,
                content_type,
                body: body.as_bytes(),
                extra: &s.chunk,
                keep_alive,
                client_version: head.version,
                head_only: head.method == Method::Head,
            };
            respond_generated(w, c, (&mut s.out, &mut s.served), &g, server.max_body).await
        }
        Action::Proxy {
            upstream,
            strip_prefix,
            host_rewrite,
        } => {
            let Some(up) = snap.config.upstreams.get(*upstream) else {
                return reject(w, c, s, Error::NoRoute, server.max_body).await;
            };
            // Cache lookup.
            let mut capture = None;
            // An authenticated route's answers are for their caller only: never cached.
            let shared = policy.is_none_or(|p| p.auth.is_none());
            if let (Some(rc), Some(settings), true) = (route.cache, &snap.config.cache, shared) {
                if head.method_span.of(buf) == b"PURGE" {
                    return purge(w, c, s, settings, keep_alive, server.max_body).await;
                }
                let mut waited = false;
                loop {
                    let found = w.with_cache(settings, |cache| cache.lookup(buf, head, w.recent()));
                    match found {
                        Lookup::Hit(hit) => {
                            return serve_hit(w, c, s, hit, false, keep_alive).await
                        }
                        Lookup::NotModified(hit) => {
                            return serve_hit(w, c, s, hit, true, keep_alive).await
                        }
                        // Another request is fetching this URL: wait for it (bounded), then
                        // look again; past the wait, fetch too.
                        Lookup::Miss(key) if w.is_fetching(key) && !waited => {
                            waited = true;
                            let _ = monoio::time::timeout(up.read_timeout, w.fetched(key)).await;
                        }
                        Lookup::Miss(key) => {
                            s.extra.extend_from_slice(b"X-Cache: MISS\r\n");
                            capture = Some(Capture {
                                key,
                                ttl: rc.ttl,
                                max_object: settings.max_object,
                                settings,
                            });
                            break;
                        }
                        Lookup::Uncacheable => break,
                    }
                }
            }
            let buf = c.wire.data();
            let forward_path = match strip_prefix {
                true => strip(path, route),
                false => path,
            };
            let host = host_rewrite
                .as_deref()
                .map(str::as_bytes)
                .unwrap_or(head.host(buf));
            // An id for the upstream when the client sent none (made only for requests that
            // go upstream; the access log makes its own for the others).
            if head.fields.get(buf, b"x-request-id").is_none() {
                w.request_id(&mut s.request_id);
                s.upstream_extra.extend_from_slice(b"X-Request-Id: ");
                s.upstream_extra.extend_from_slice(&s.request_id);
                s.upstream_extra.extend_from_slice(b"\r\n");
            }
            s.out.clear();
            let omit_request = policy.map(|p| |name: &[u8]| p.drops_request_header(name));
            let fwd = Forward {
                path: forward_path,
                host,
                client_addr: c.addr,
                proto: if c.wire.is_tls() { b"https" } else { b"http" },
                tunnel: head.wants_upgrade(),
                extra: &s.upstream_extra,
                omit: omit_request.as_ref().map(|f| f as &Omit<'_>),
            };
            encode::request_head(&mut s.out, buf, head, &fwd);
            match (&up.kind, snap.upstreams.get(*upstream)) {
                (UpstreamKind::Builtin(Builtin::Echo), _) => echo_reply(w, c, s, keep_alive).await,
                (UpstreamKind::Targets(_), None) => {
                    reject(w, c, s, Error::NoRoute, server.max_body).await
                }
                (UpstreamKind::Targets(_), Some(state)) => {
                    let ctx = ForwardCtx {
                        up,
                        state,
                        keep_alive,
                        max_body: server.max_body,
                        client_timeout: server.keepalive_timeout,
                        limits: server.limits,
                        capture,
                        policy,
                    };
                    forward(w, c, s, &ctx).await
                }
            }
        }
    }
}

/// What a route's access rules make of a request.
enum Access {
    /// On to the upstream (or the route's answer), with the identity and `set` lines in
    /// `s.upstream_extra` and the response's CORS lines in `s.extra`.
    Pass,
    /// A CORS preflight the gateway answers itself: 204 with the lines in `s.extra`.
    Preflight,
    /// Refused: the error's status, with any challenge (WWW-Authenticate) in `s.extra`.
    Refuse(Error),
}

/// Applies a route's access rules in their order (see `access`): address, CORS, credentials,
/// request header edits. Every refusal is logged here with its reason (the status and counter
/// come from `reject`).
fn check_access(
    w: &Worker,
    head: &RequestHead,
    buf: &[u8],
    ip: IpAddr,
    policy: &RoutePolicy,
    s: &mut Scratch,
) -> Access {
    if !policy.ip.permits(ip) {
        return Access::Refuse(Error::IpDenied);
    }
    if let Some(cors) = &policy.cors {
        let request = cors::classify(
            head.method == Method::Options,
            head.fields.get(buf, b"origin"),
            head.fields.get(buf, b"access-control-request-method"),
            head.fields.get(buf, b"access-control-request-headers"),
        );
        match request {
            CorsRequest::Preflight {
                origin,
                method,
                headers,
            } => {
                return match cors.preflight(origin, method, headers, &mut s.extra) {
                    Preflight::Allowed => Access::Preflight,
                    Preflight::Refused(why) => {
                        s.extra.clear();
                        tracing::info!(
                            worker = w.id,
                            reason = why.as_str(),
                            "CORS preflight refused"
                        );
                        Access::Refuse(Error::CorsRefused)
                    }
                };
            }
            CorsRequest::Actual { origin } => cors.response_headers(Some(origin), &mut s.extra),
            CorsRequest::NotCors => {}
        }
    }
    if let Some(auth) = &policy.auth {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verdict = auth.check(
            |name| head.fields.get(buf, name),
            now,
            &mut w.jwt.borrow_mut(),
            &mut s.upstream_extra,
        );
        if let Verdict::Deny(denial) = verdict {
            tracing::info!(
                worker = w.id,
                status = denial.status,
                reason = denial.reason.as_str(),
                "request refused by auth"
            );
            denial.write_headers(&mut s.extra);
            return Access::Refuse(if denial.status == 403 {
                Error::Forbidden
            } else {
                Error::Unauthorized
            });
        }
    }
    policy.request_headers.write_set(&mut s.upstream_extra);
    policy.response_headers.write_set(&mut s.extra);
    Access::Pass
}

/// The RateLimit-Limit/-Remaining/-Reset fields (draft-ietf-httpapi-ratelimit-headers).
fn rate_headers(out: &mut Vec<u8>, limit: u64, remaining: u64, reset: u64) {
    for (name, value) in [
        (&b"RateLimit-Limit: "[..], limit),
        (b"RateLimit-Remaining: ", remaining),
        (b"RateLimit-Reset: ", reset),
    ] {
        out.extend_from_slice(name);
        encode::decimal(out, value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The path with the route's prefix removed, keeping a leading `/`.
fn strip<'b>(path: &'b [u8], route: &Route) -> &'b [u8] {
    let prefix = route.path_prefix.trim_end_matches('/').as_bytes();
    match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with(b"/") || rest.starts_with(b"?") || rest.is_empty() => rest,
        _ => path,
    }
}

/// Answers with the error's status (counting and logging it); keeps the connection only if
/// the request had no body to skip.
pub async fn reject(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    e: Error,
    max_body: u64,
) -> Next {
    w.metrics.error(e.label());
    tracing::info!(
        worker = w.id,
        status = e.status(),
        reason = e.label(),
        "request rejected"
    );
    let keep_alive = c.head.keep_alive() && !w.drain.is_draining();
    s.chunk.clear();
    encode::error_body(&mut s.chunk, e.status());
    let g = Generated {
        status: e.status(),
        content_type: b"text/plain",
        body: &s.chunk,
        extra: &s.extra,
        keep_alive,
        client_version: c.head.version,
        head_only: c.head.method == Method::Head,
    };
    respond_generated(w, c, (&mut s.out, &mut s.served), &g, max_body).await
}

/// Skips the request body (small ones only), then writes a response the gateway made.
async fn respond_generated(
    w: &Worker,
    c: ClientSide<'_>,
    (out, served): (&mut Vec<u8>, &mut Served),
    g: &Generated<'_>,
    max_body: u64,
) -> Next {
    let framing = c.head.framing();
    c.wire.consume(c.head.len);
    let mut keep = g.keep_alive && skip_body(c.wire, framing, max_body.min(64 * 1024)).await;
    out.clear();
    encode::generated(
        out,
        &Generated {
            keep_alive: keep,
            ..*g
        },
    );
    let (res, buf) = c.wire.send(std::mem::take(out)).await;
    *out = buf;
    w.metrics.response(g.status);
    served.status = g.status;
    served.bytes = if g.head_only { 0 } else { g.body.len() as u64 };
    keep &= res.is_ok();
    if keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Reads and drops a request body of at most `limit` bytes; false if it could not (too big,
/// malformed, or the client left), so the connection must close.
async fn skip_body(client: &mut Wire, framing: Framing, limit: u64) -> bool {
    if let Framing::Length(n) = framing {
        if n > limit {
            return false;
        }
    }
    let mut dec = BodyDecoder::new(framing, &Limits::DEFAULT);
    let mut seen = 0u64;
    while !dec.is_done() {
        if client.data().is_empty() && !matches!(client.fill().await, Ok(1..)) {
            return false;
        }
        let Ok(d) = dec.decode(client.data()) else {
            return false;
        };
        seen += d.data.len() as u64;
        client.consume(d.consumed);
        if seen > limit {
            return false;
        }
    }
    true
}

/// The built-in echo upstream: the forwarded head (already in `s.out`) as JSON.
async fn echo_reply(w: &Worker, c: ClientSide<'_>, s: &mut Scratch, keep_alive: bool) -> Next {
    let framing = c.head.framing();
    c.wire.consume(c.head.len);
    let mut body_bytes = 0u64;
    let mut dec = BodyDecoder::new(framing, &Limits::DEFAULT);
    while !dec.is_done() {
        if c.wire.data().is_empty() && !matches!(c.wire.fill().await, Ok(1..)) {
            return Next::Close;
        }
        let Ok(d) = dec.decode(c.wire.data()) else {
            return Next::Close;
        };
        body_bytes += d.data.len() as u64;
        c.wire.consume(d.consumed);
    }
    let limits = Limits::DEFAULT;
    let mut forwarded = RequestHead::new(&limits);
    let body = match forwarded.parse(&s.out, &limits) {
        Ok(Status::Complete(_)) => echo::render(&s.out, &forwarded, body_bytes),
        _ => b"{}\n".to_vec(),
    };
    let g = Generated {
        status: 200,
        content_type: b"application/json",
        body: &body,
        extra: &s.extra,
        keep_alive,
        client_version: c.head.version,
        head_only: c.head.method == Method::Head,
    };
    s.out.clear();
    encode::generated(&mut s.out, &g);
    let (res, buf) = c.wire.send(std::mem::take(&mut s.out)).await;
    s.out = buf;
    w.metrics.response(200);
    s.served.status = 200;
    s.served.bytes = if g.head_only { 0 } else { body.len() as u64 };
    if keep_alive && res.is_ok() {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

struct ForwardCtx<'a> {
    up: &'a UpstreamConfig,
    /// This worker's state of the upstream: balancer, health, breaker, budget.
    state: &'a UpstreamState,
    keep_alive: bool,
    max_body: u64,
    client_timeout: Duration,
    limits: Limits,
    /// A cache miss: store the response under this key if the cache admits it.
    capture: Option<Capture<'a>>,
    /// The route's access rules, for the response's header edits.
    policy: Option<&'a RoutePolicy>,
}

#[derive(Clone, Copy)]
struct Capture<'a> {
    key: Key,
    ttl: Option<Duration>,
    max_object: u64,
    settings: &'a CacheSettings,
}

/// `PURGE /path`: drops every stored variant of the URL, for addresses in
/// `cache.purge_allow`; anyone else gets 403 (counted and logged).
async fn purge(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    settings: &CacheSettings,
    keep_alive: bool,
    max_body: u64,
) -> Next {
    let allowed = std::str::from_utf8(c.addr)
        .ok()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| settings.purge_allow.iter().any(|b| b.contains(ip)));
    if !allowed {
        return reject(w, c, s, Error::PurgeForbidden, max_body).await;
    }
    let buf = c.wire.data();
    let purged = w.with_cache(settings, |cache| {
        cache.purge(c.head.host(buf), c.head.path.of(buf))
    });
    tracing::info!(worker = w.id, purged, "cache purge");
    s.chunk.clear();
    s.chunk.extend_from_slice(b"purged ");
    encode::decimal(&mut s.chunk, purged as u64);
    s.chunk.push(b'\n');
    let g = Generated {
        status: 200,
        content_type: b"text/plain",
        body: &s.chunk,
        extra: b"",
        keep_alive,
        client_version: c.head.version,
        head_only: false,
    };
    respond_generated(w, c, (&mut s.out, &mut s.served), &g, max_body).await
}

/// Answers from the cache: the stored response (a 304 when `not_modified`), with Age and
/// `X-Cache: HIT`; the body is the cache's own buffer, not a copy, unless it is small enough
/// to ride in the head's write.
async fn serve_hit(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    hit: Hit,
    not_modified: bool,
    keep_alive: bool,
) -> Next {
    let framing = c.head.framing();
    let head_only = c.head.method == Method::Head || not_modified;
    c.wire.consume(c.head.len);
    let keep = keep_alive && skip_body(c.wire, framing, 64 * 1024).await;
    s.reply.clear();
    if not_modified {
        s.reply.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\n");
        encode::cached(
            &mut s.reply,
            &hit.fields(),
            hit.age,
            None,
            &s.extra,
            keep,
            c.head.version,
        );
    } else {
        let len = Some(hit.body.len() as u64);
        encode::cached(
            &mut s.reply,
            &hit.head,
            hit.age,
            len,
            &s.extra,
            keep,
            c.head.version,
        );
    }
    let hit_len = hit.body.len() as u64;
    let inline = !head_only && hit.body.len() <= 16 * 1024;
    if inline {
        s.reply.extend_from_slice(&hit.body);
    }
    let (res, buf) = c.wire.send(std::mem::take(&mut s.reply)).await;
    s.reply = buf;
    let mut ok = res.is_ok();
    if ok && !inline && !head_only {
        ok = c.wire.send_bytes(hit.body).await.is_ok();
    }
    let status = if not_modified { 304 } else { 200 };
    w.metrics.response(status);
    s.served.status = status;
    s.served.bytes = if head_only { 0 } else { hit_len };
    s.served.cache = "HIT";
    if keep && ok {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// How one forwarding attempt failed.
enum Failure {
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
            Failure::Before(Error::UpstreamRefused | Error::UpstreamConnectTimeout) => {
                Some(Condition::ConnectFailure)
            }
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
                    | Error::UpstreamProtocol(_)
            ),
            Failure::Retry(_) => true,
            Failure::Stale | Failure::Overloaded(_) => false,
        }
    }
}

/// The conditions of `retries.on` that are not a status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition {
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
const RETRY_AFTER: &[u8] = b"Retry-After: 1\r\n";

/// The consistent-hash key of a request (0 for other policies, which ignore it).
fn balance_key(up: &UpstreamConfig, c: &ClientSide<'_>) -> u64 {
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
async fn forward(w: &Worker, c: ClientSide<'_>, s: &mut Scratch, ctx: &ForwardCtx<'_>) -> Next {
    let head = c.head;
    let framing = head.framing();
    if let Framing::Length(n) = framing {
        if n > ctx.max_body {
            return reject(w, c, s, Error::BodyTooLarge, ctx.max_body).await;
        }
    }
    let up = ctx.state;
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
            w.pool.take(addr, ctx.up.idle_timeout, w.recent())
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
                connect(addr, limit).await.map(|stream| {
                    // Deadlines and the upstream time count from here, not from the request.
                    w.now();
                    Metrics::add(&w.metrics.upstream_connects);
                    Box::new(Upstream {
                        wire: Wire::new(stream, 16 * 1024),
                        target: addr,
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
async fn fail(w: &Worker, client: &mut Wire, s: &mut Scratch, e: Error, extra: &[u8]) -> Next {
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
async fn overloaded(
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
    s.chunk.clear();
    encode::error_body(&mut s.chunk, e.status());
    let g = Generated {
        status: e.status(),
        content_type: b"text/plain",
        body: &s.chunk,
        extra: &s.extra,
        keep_alive: ctx.keep_alive,
        client_version: c.head.version,
        head_only: c.head.method == Method::Head,
    };
    respond_generated(w, c, (&mut s.out, &mut s.served), &g, ctx.max_body).await
}

async fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
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

/// The facts of the client's request an attempt needs after its head left the buffer.
#[derive(Clone, Copy)]
struct Request {
    method: Method,
    version: Version,
    framing: Framing,
    expect_continue: bool,
    tunnel: bool,
    /// The body is in `s.out` after the head (nothing left to relay from the client).
    body_inline: bool,
    /// The attempt's deadline for its response head (`per_try_timeout`, `timeout`).
    try_deadline: Option<Instant>,
    /// A response with a status in `retries.on` may be dropped for a retry.
    retry_status: bool,
}

enum Outcome {
    /// Response relayed; the upstream connection may serve another request.
    Reusable,
    /// Response relayed; the upstream connection is spent.
    Done,
    /// 101 relayed; the connection becomes a tunnel.
    Tunnel,
}

/// One attempt on one upstream connection: head and body up, response back.
async fn exchange(
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
        };
        relay(
            client,
            &mut conn.wire,
            &mut s.chunk,
            &limits,
            (&mut None, 0),
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
            let read = match (wait_from.take(), req.try_deadline) {
                (Some(at), limit) => {
                    let at = at + ctx.up.read_timeout;
                    let at = limit.map_or(at, |d| d.min(at));
                    monoio::time::timeout_at(at.into(), conn.wire.fill()).await
                }
                (None, None) => monoio::time::timeout(ctx.up.read_timeout, conn.wire.fill()).await,
                (None, Some(d)) => {
                    let at = (Instant::now() + ctx.up.read_timeout).min(d);
                    monoio::time::timeout_at(at.into(), conn.wire.fill()).await
                }
            };
            match read {
                Err(_) => return Err(Failure::Before(Error::UpstreamTimeout)),
                Ok(Ok(0)) | Ok(Err(_))
                    if !got_any && (req.framing == Framing::Length(0) || req.body_inline) =>
                {
                    return Err(stale(conn.reused, Error::UpstreamClosed))
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Failure::Before(Error::UpstreamClosed)),
                Ok(Ok(_)) => got_any = true,
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
    s.served.upstream_time = Some(w.now().saturating_duration_since(sent_at));
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
        };
        let keep = admitted.as_ref().map_or(0, |(cap, _)| cap.max_object);
        s.served.bytes = relay(
            &mut conn.wire,
            client,
            &mut s.chunk,
            &relay_cfg,
            (&mut captured, keep),
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

/// How relayed body bytes are framed on the way out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reframe {
    /// As they are (a length-delimited or close-delimited body).
    Raw,
    /// In chunks (the body's own chunking is normalised, or added).
    Chunked,
}

struct Relay {
    framing: Framing,
    reframe: Reframe,
    read_timeout: Duration,
    max: Option<u64>,
    limits: Limits,
}

enum RelayError {
    Read,
    Write,
    Timeout,
    Truncated,
    TooLarge,
    Parse(crate::http::ParseError),
}

/// Streams one body from `src` (what is buffered first, then reads) to `dst`: at most one
/// buffer of it is in memory at a time.
/// `capture` collects the body for the cache while it stays within its limit, and is
/// dropped once it would not.
async fn relay(
    src: &mut Wire,
    dst: &mut Wire,
    chunk: &mut Vec<u8>,
    r: &Relay,
    (capture, capture_max): (&mut Option<Vec<u8>>, u64),
) -> Result<u64, RelayError> {
    let mut dec = BodyDecoder::new(r.framing, &r.limits);
    let mut total = 0u64;
    while !dec.is_done() {
        if src.data().is_empty() {
            match monoio::time::timeout(r.read_timeout, src.fill()).await {
                Err(_) => return Err(RelayError::Timeout),
                Ok(Err(_)) => return Err(RelayError::Read),
                Ok(Ok(0)) if dec.complete_at_close() => break,
                Ok(Ok(0)) => return Err(RelayError::Truncated),
                Ok(Ok(_)) => {}
            }
        }
        let d = dec.decode(src.data()).map_err(RelayError::Parse)?;
        let len = d.data.len();
        if len > 0 {
            total += len as u64;
            if r.max.is_some_and(|max| total > max) {
                return Err(RelayError::TooLarge);
            }
            if total > capture_max {
                *capture = None;
            }
            if let Some(body) = capture.as_mut() {
                body.extend_from_slice(src.data().get(d.data.clone()).unwrap_or_default());
            }
            match r.reframe {
                Reframe::Raw => dst
                    .send_from(src, d.data.clone())
                    .await
                    .map_err(|_| RelayError::Write)?,
                Reframe::Chunked => {
                    chunk.clear();
                    encode::chunk_head(chunk, len);
                    chunk.extend_from_slice(src.data().get(d.data.clone()).unwrap_or_default());
                    chunk.extend_from_slice(encode::CHUNK_END);
                    let (res, buf) = dst.send(std::mem::take(chunk)).await;
                    *chunk = buf;
                    res.map_err(|_| RelayError::Write)?;
                }
            }
        }
        src.consume(d.consumed);
    }
    if r.reframe == Reframe::Chunked {
        dst.send_static(encode::LAST_CHUNK)
            .await
            .map_err(|_| RelayError::Write)?;
    }
    Ok(total)
}
