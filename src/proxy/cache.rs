//! The cache phases a route with `cache` goes through before forwarding: PURGE, and answering
//! a hit from the stored response. Storing a response happens in `exchange`.

use super::*;

/// `PURGE /path`: drops every stored variant of the URL, for addresses in
/// `cache.purge_allow`; anyone else gets 403 (counted and logged).
pub(super) async fn purge(
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
        ready: None,
    };
    respond_generated(w, c, (&mut s.out, &mut s.served), &g, max_body).await
}

/// Answers from the cache: the stored response (a 304 when `not_modified`), with Age and
/// `X-Cache: HIT`; the body is the cache's own buffer, not a copy, unless it is small enough
/// to ride in the head's write.
pub(super) async fn serve_hit(
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
