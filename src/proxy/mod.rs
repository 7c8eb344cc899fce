//! THE pipeline, one request at a time on one client connection:
//!
//! `admit → route → policy → cache lookup → forward → cache store → respond → log`
//!
//! [`admit`] reads and parses the head under the header timeout; [`handle`] routes it, applies
//! the route's rate limit and access rules (`policy`), answers from the cache (`cache`) or
//! directly (a `respond` route, the built-in echo upstream, an error), or forwards it
//! (`forward`: target, breaker, retries; `exchange`: one attempt; `relay`: bodies). Bodies are
//! never held whole: they move through the connections' fixed buffers as they arrive. The
//! submodules share this module's imports and types (`use super::*`): they are one pipeline
//! cut into phases, not separate layers.

mod admit;
mod cache;
mod exchange;
mod forward;
mod policy;
mod relay;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::access::cors::{self, CorsRequest, Preflight};
use crate::access::{write_header, RoutePolicy, Verdict};
use crate::cache::{Hit, Key, Lookup};
use crate::config::{
    Action, Balance, Builtin, CacheSettings, HashKey, LimitKey, RetryOn, Route,
    Upstream as UpstreamConfig, UpstreamKind,
};
use crate::deadline::Deadline;
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

pub use admit::admit;
use cache::{purge, serve_hit};
use exchange::{exchange, Outcome, Request};
use forward::{forward, Capture, Failure, ForwardCtx};
use policy::{check_access, Access};
use relay::{relay, Reframe, Relay, RelayError};

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
    /// The timer for upstream response heads, kept across the connection's requests.
    pub upstream_wait: Deadline,
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
            upstream_wait: Deadline::default(),
        }
    }

    /// Makes this scratch as [`Scratch::new`] makes one, keeping the buffers' room up to
    /// 16 KiB each: for the next connection to use. A buffer a large head grew (up to
    /// `max_head`) is cut back, so that a worker's spare scratches do not keep what a few
    /// clients made them hold. The upstream timer goes: it holds this connection's waker.
    pub fn recycle(&mut self) {
        /// The largest room a new scratch has (`chunk`'s).
        const KEEP: usize = 16 * 1024 + 32;
        // Every field by name: one added later must be reset here too, or the compiler says so.
        let Scratch {
            out,
            reply,
            chunk,
            extra,
            request,
            request_id,
            upstream_extra,
            response,
            upstream_wait,
            served,
        } = self;
        for buf in [
            out,
            reply,
            chunk,
            extra,
            request,
            request_id,
            upstream_extra,
        ] {
            buf.clear();
            buf.shrink_to(KEEP);
        }
        response.recycle();
        *upstream_wait = Deadline::default();
        *served = Served::default();
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
                    ready: None,
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
            // The fields made when this worker took up the snapshot hold the configured lines
            // only: a request that adds its own (RateLimit-*) has them made again.
            let ready = match s.served.route {
                Some(i) if s.extra.is_empty() => snap.direct.get(i).and_then(Option::as_deref),
                _ => None,
            };
            let mut content_type: &[u8] = b"";
            if ready.is_none() {
                content_type = direct_fields(headers, &mut s.chunk);
                s.chunk.extend_from_slice(&s.extra);
            }
            let g = Generated {
                status: *status,
                content_type,
                body: body.as_bytes(),
                extra: &s.chunk,
                keep_alive,
                client_version: head.version,
                head_only: head.method == Method::Head,
                ready,
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
                write_header(&mut s.upstream_extra, b"X-Request-Id", &s.request_id);
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
    answer_error(w, c, s, e, keep_alive, max_body).await
}

/// Answers with the error's status page and the lines in `s.extra` (the caller has counted
/// and logged it).
async fn answer_error(
    w: &Worker,
    c: ClientSide<'_>,
    s: &mut Scratch,
    e: Error,
    keep_alive: bool,
    max_body: u64,
) -> Next {
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
        ready: None,
    };
    respond_generated(w, c, (&mut s.out, &mut s.served), &g, max_body).await
}

/// Appends a direct answer's configured `headers` as field lines; returns the Content-Type
/// to add (none when the lines have one).
fn direct_fields(headers: &[(String, String)], out: &mut Vec<u8>) -> &'static [u8] {
    let mut content_type: &[u8] = b"text/plain; charset=utf-8";
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-type") {
            content_type = b"";
        }
        write_header(out, name.as_bytes(), value.as_bytes());
    }
    content_type
}

/// The status line and fields of each route's direct answer, by route index (`None` for a
/// proxied route), made once per snapshot and worker: see [`Generated::ready`].
pub fn direct_answers(routes: &[Route]) -> Vec<Option<Vec<u8>>> {
    routes
        .iter()
        .map(|route| match &route.action {
            Action::Respond {
                status,
                body,
                headers,
            } => {
                let mut lines = Vec::new();
                let content_type = direct_fields(headers, &mut lines);
                let g = Generated {
                    status: *status,
                    content_type,
                    body: body.as_bytes(),
                    extra: &lines,
                    keep_alive: true,
                    client_version: Version::Http11,
                    head_only: false,
                    ready: None,
                };
                let mut fields = Vec::new();
                encode::fields(&mut fields, &g, body.len());
                Some(fields)
            }
            Action::Proxy { .. } => None,
        })
        .collect()
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
        ready: None,
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
