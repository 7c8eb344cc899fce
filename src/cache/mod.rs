//! A worker's response-cache shard: a byte-bounded store of complete GET responses with the
//! semantics of an RFC 9111 shared cache that never revalidates (a stale entry is a miss).
//! Sans-io: it takes parsed heads, bytes and a `now`, and returns decisions; it never imports
//! monoio, never touches another worker's shard, and never copies a body on a hit.
//!
//! The proxy's use, in pipeline order:
//!
//! 1. [`Cache::lookup`] → [`Lookup::Hit`] (send [`Hit::head`], then `Age`, `X-Cache: HIT`,
//!    `Content-Length` and connection fields, then [`Hit::body`] unless the request is HEAD),
//!    [`Lookup::NotModified`] (answer 304: a 304 status line, [`Hit::fields`], `Age`, no
//!    body), [`Lookup::Miss`] (forward, keep the [`Key`]) or [`Lookup::Uncacheable`] (forward,
//!    store nothing).
//! 2. On a miss, when the response head arrives: [`Cache::admit`]; if it returns an
//!    [`Admission`], collect the body (up to `max_object` bytes) while relaying it.
//! 3. With the whole body: [`Cache::store`].
//!
//! HEAD requests are answered from the GET entry (same head, no body) and their own
//! responses, which have no body, are never stored: a HEAD miss is `Uncacheable`.
//!
//! Inside: `key` (the URL and variant identities, hashed and compared without allocating),
//! `policy` (Cache-Control, lifetimes, Vary, conditional requests), `date` (IMF-fixdate),
//! `store` (the slab, the per-URL variants records, S3-FIFO eviction under the byte budget).

mod date;
mod key;
mod policy;
mod store;

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::http::{HeaderKind, Method, RequestHead, ResponseHead, Span, TargetForm};
use key::Hashing;
use store::{Entry, Store};

/// One shard's budget and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes this shard may hold: heads, bodies, keys and per-entry bookkeeping.
    pub memory: usize,
    /// Largest body stored.
    pub max_object: usize,
    /// Lifetime of a response that allows caching but gives none, where the route sets none.
    pub default_ttl: Option<Duration>,
}

/// A worker's cache shard. Not shared: one per worker, used through `&mut`.
#[derive(Debug)]
pub struct Cache {
    cfg: CacheConfig,
    hashing: Hashing,
    store: Store,
    hits: u64,
    misses: u64,
    // A Cell because `admit` (which takes `&self`) refuses oversized bodies early.
    rejected_too_large: Cell<u64>,
}

/// What the cache can do for a request.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh stored response.
    Hit(Hit),
    /// A fresh stored response matches the request's conditions: answer 304.
    NotModified(Hit),
    /// Nothing usable stored: forward, and store the answer under this key if admitted.
    Miss(Key),
    /// Forward and store nothing: not GET/HEAD, a HEAD miss, or a `no-store` miss.
    Uncacheable,
}

/// A stored response, shared with the cache (no bytes are copied).
#[derive(Debug, Clone)]
pub struct Hit {
    /// `HTTP/1.1 <status> <reason>\r\n` and the end-to-end fields the upstream sent, each
    /// line ending in CRLF, without Content-Length, Transfer-Encoding, Age and hop-by-hop
    /// fields, and without the empty line: the sender appends its own fields and the CRLF.
    pub head: Bytes,
    pub body: Bytes,
    /// Current age in seconds (RFC 9111 §4.2.3), for the `Age` field.
    pub age: u64,
    fields_at: usize,
}

impl Hit {
    /// `head` without its status line, for a 304 answer.
    pub fn fields(&self) -> Bytes {
        if self.fields_at <= self.head.len() {
            self.head.slice(self.fields_at..)
        } else {
            Bytes::new()
        }
    }
}

/// What a miss is stored under, and when it was looked up (the request time of RFC 9111
/// §4.2.3). Keys are equal when they name the same URL (by a keyed 64-bit hash), whatever
/// the variant: a proxy coalescing misses on a key must look up again once the fetch is
/// stored, since the waiters may want other variants.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    url: u64,
    requested: Instant,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.url == other.url
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.url.hash(state);
    }
}

/// A response that may be stored, with everything `store` needs but the body.
#[derive(Debug)]
pub struct Admission {
    /// When the response stops being fresh, counting the Age it arrived with; `store` also
    /// takes off the time the upstream took to answer.
    pub expires: Instant,
    url: u64,
    url_id: Box<[u8]>,
    vary: Box<[u8]>,
    variant: u64,
    vary_values: Box<[u8]>,
    head: Bytes,
    fields_at: usize,
    etag: Span,
    modified: Option<i64>,
    response_time: Instant,
    age: Duration,
}

/// A shard's counters; the control plane sums them over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    /// Bytes held, as charged against `memory`.
    pub bytes: usize,
    /// Lookups answered from the cache (Hit or NotModified).
    pub hits: u64,
    /// Lookups that returned `Miss`.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Entries dropped because they went stale.
    pub expired: u64,
    /// Responses not stored because the body (or the whole entry) was too large.
    pub rejected_too_large: u64,
}

impl Cache {
    pub fn new(cfg: CacheConfig) -> Cache {
        Cache {
            cfg,
            hashing: Hashing::default(),
            store: Store::new(cfg.memory),
            hits: 0,
            misses: 0,
            rejected_too_large: Cell::new(0),
        }
    }

    /// Looks up a GET or HEAD request at `now`: a fresh stored variant of its URL that the
    /// request's own Cache-Control accepts is a hit (a 304 if its conditions match), else a
    /// miss carrying the key to store the answer under. A stale entry found on the way is
    /// removed. Allocates nothing.
    pub fn lookup(&mut self, buf: &[u8], req: &RequestHead, now: Instant) -> Lookup {
        if !cacheable_request(req) {
            return Lookup::Uncacheable;
        }
        let wants = policy::Request::read(buf, &req.fields);
        let (host, path) = (req.host(buf), req.path.of(buf));
        let url = self.hashing.url(host, path);
        if let Some(i) = self.find(url, buf, req) {
            match self.answer(i, buf, req, &wants, now) {
                Answer::Stale => self.store.expire(i),
                Answer::Refused => {}
                Answer::Fresh(found) => {
                    self.store.touch(i);
                    self.hits += 1;
                    return found;
                }
            }
        }
        if wants.no_store || req.method == Method::Head {
            return Lookup::Uncacheable;
        }
        self.misses += 1;
        Lookup::Miss(Key {
            url,
            requested: now,
        })
    }

    /// The stored variant of this request's URL that matches its Vary fields.
    fn find(&self, url: u64, buf: &[u8], req: &RequestHead) -> Option<u32> {
        let record = self.store.url(url)?;
        let (host, path) = (req.host(buf), req.path.of(buf));
        if !key::same(&record.id, |c| key::url_stream(host, path, c)) {
            return None;
        }
        let variant = self.hashing.variant(&record.vary, buf, &req.fields);
        record.variants.iter().copied().find(|&i| {
            self.store.entry(i).is_some_and(|e| {
                e.variant == variant
                    && key::same(&e.vary_values, |c| {
                        key::vary_stream(&record.vary, buf, &req.fields, c)
                    })
            })
        })
    }

    fn answer(
        &self,
        i: u32,
        buf: &[u8],
        req: &RequestHead,
        wants: &policy::Request,
        now: Instant,
    ) -> Answer {
        let Some(e) = self.store.entry(i) else {
            return Answer::Refused;
        };
        if e.expires <= now {
            return Answer::Stale;
        }
        let age = (e.initial_age + now.saturating_duration_since(e.response_time)).as_secs();
        if wants.no_cache || wants.max_age.is_some_and(|max| age > max) {
            return Answer::Refused;
        }
        let hit = Hit {
            head: e.head.clone(),
            body: e.body.clone(),
            age,
            fields_at: e.fields_at,
        };
        if policy::not_modified(buf, &req.fields, e.etag.of(&e.head), e.modified) {
            Answer::Fresh(Lookup::NotModified(hit))
        } else {
            Answer::Fresh(Lookup::Hit(hit))
        }
    }

    /// Decides whether the response to a GET may be stored and for how long (RFC 9111 §3,
    /// §4.2.1). Refused: requests with `no-store`; statuses other than 200, 203, 204, 300,
    /// 301, 308, 404, 410; responses with `no-store`, `no-cache` or `private` (we never
    /// revalidate, so we do not store what would need it), with `Set-Cookie`, with `Vary: *`,
    /// or with a Content-Length over `max_object`; answers to requests with `Authorization`
    /// unless the response says `public` or `s-maxage`; responses without a lifetime when
    /// neither `route_ttl` nor the shard's default TTL gives one (no heuristic freshness);
    /// responses already stale on arrival. `now` is the response time.
    pub fn admit(
        &self,
        req_buf: &[u8],
        req: &RequestHead,
        resp_buf: &[u8],
        resp: &ResponseHead,
        route_ttl: Option<Duration>,
        now: Instant,
    ) -> Option<Admission> {
        if req.method != Method::Get || !cacheable_request(req) {
            return None;
        }
        if policy::Request::read(req_buf, &req.fields).no_store
            || !policy::storable_status(resp.status)
        {
            return None;
        }
        let says = policy::Response::read(resp_buf, &resp.fields);
        let authorized = req.fields.get(req_buf, b"authorization").is_some();
        if says.no_store
            || says.no_cache
            || says.private
            || resp.fields.get(resp_buf, b"set-cookie").is_some()
            || (authorized && !says.public && says.s_maxage.is_none())
        {
            return None;
        }
        let vary = policy::vary_names(resp_buf, &resp.fields)?;
        if resp
            .fields
            .content_length
            .is_some_and(|n| n > self.cfg.max_object as u64)
        {
            self.rejected_too_large
                .set(self.rejected_too_large.get() + 1);
            return None;
        }
        let lifetime = says
            .lifetime(resp_buf, &resp.fields)
            .or(route_ttl)
            .or(self.cfg.default_ttl)?;
        let age = policy::age(resp_buf, &resp.fields);
        let fresh_for = lifetime.checked_sub(age).filter(|d| !d.is_zero())?;
        let expires = now.checked_add(fresh_for)?;

        let (host, path) = (req.host(req_buf), req.path.of(req_buf));
        let mut url_id = Vec::with_capacity(host.len() + path.len() + 2);
        key::url_stream(host, path, &mut url_id);
        let mut vary_values = Vec::new();
        key::vary_stream(&vary, req_buf, &req.fields, &mut vary_values);
        let (head, fields_at, etag) = stored_head(resp_buf, resp);
        let modified = resp
            .fields
            .get(resp_buf, b"last-modified")
            .or_else(|| resp.fields.get(resp_buf, b"date"))
            .and_then(date::parse);
        Some(Admission {
            expires,
            url: self.hashing.url(host, path),
            url_id: url_id.into(),
            variant: self.hashing.variant(&vary, req_buf, &req.fields),
            vary: vary.into(),
            vary_values: vary_values.into(),
            head,
            fields_at,
            etag,
            modified,
            response_time: now,
            age,
        })
    }

    /// Stores the complete body of an admitted response under the key of its miss. Not
    /// stored: a body over `max_object`, an entry larger than the whole shard, a response
    /// that went stale while its body arrived, or a key and admission of different URLs.
    /// `body` should own its buffer alone: a slice of a larger buffer keeps all of it alive
    /// while only the slice is charged.
    pub fn store(&mut self, key: Key, admission: Admission, body: Bytes, now: Instant) {
        let a = admission;
        if key.url != a.url {
            return;
        }
        if body.len() > self.cfg.max_object {
            self.rejected_too_large
                .set(self.rejected_too_large.get() + 1);
            return;
        }
        // RFC 9111 §4.2.3 without `apparent_age`: that needs our wall clock against the
        // upstream's Date, and we trust neither clock over the Age the upstream sent.
        let delay = a.response_time.saturating_duration_since(key.requested);
        let Some(expires) = a.expires.checked_sub(delay).filter(|&e| e > now) else {
            return;
        };
        // The first clone of a Vec-backed `Bytes` allocates its shared header: let that
        // happen here, on the store path, rather than on the first hit.
        drop((a.head.clone(), body.clone()));
        let entry = Entry {
            url: a.url,
            variant: a.variant,
            vary_values: a.vary_values,
            head: a.head,
            fields_at: a.fields_at,
            body,
            etag: a.etag,
            modified: a.modified,
            response_time: a.response_time,
            initial_age: a.age + delay,
            expires,
        };
        if !self.store.insert(a.url_id, a.vary, entry, now) {
            self.rejected_too_large
                .set(self.rejected_too_large.get() + 1);
        }
    }

    /// Removes every stored variant of a URL (host as the client sends it, any case; path and
    /// query as in the request target). Returns how many were removed.
    pub fn purge(&mut self, host: &[u8], path_and_query: &[u8]) -> usize {
        let url = self.hashing.url(host, path_and_query);
        let ours = self.store.url(url).is_some_and(|record| {
            key::same(&record.id, |c| key::url_stream(host, path_and_query, c))
        });
        if ours {
            self.store.remove_url(url)
        } else {
            0
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.store.len(),
            bytes: self.store.bytes(),
            hits: self.hits,
            misses: self.misses,
            evictions: self.store.evictions,
            expired: self.store.expired,
            rejected_too_large: self.rejected_too_large.get(),
        }
    }
}

/// What a found entry can do for the request.
enum Answer {
    Fresh(Lookup),
    /// Past its lifetime: remove it.
    Stale,
    /// Fresh, but the request will not take it (`no-cache`, `max-age`).
    Refused,
}

/// GET or HEAD, to a target that names a resource (origin or absolute form).
fn cacheable_request(req: &RequestHead) -> bool {
    matches!(req.method, Method::Get | Method::Head)
        && matches!(req.form, TargetForm::Origin | TargetForm::Absolute)
}

/// The head kept for hits (see [`Hit::head`]), where its fields start, and where the ETag
/// value lies in it.
fn stored_head(buf: &[u8], resp: &ResponseHead) -> (Bytes, usize, Span) {
    let mut head = Vec::with_capacity(resp.len);
    head.extend_from_slice(b"HTTP/1.1 ");
    crate::http::encode::decimal(&mut head, u64::from(resp.status));
    head.push(b' ');
    head.extend_from_slice(resp.reason.of(buf));
    head.extend_from_slice(b"\r\n");
    let fields_at = head.len();
    let mut etag = Span::default();
    for h in &resp.fields.headers {
        let name = h.name.of(buf);
        let dropped = h.kind.is_hop_by_hop()
            || matches!(
                h.kind,
                HeaderKind::ContentLength | HeaderKind::TransferEncoding
            )
            || name.eq_ignore_ascii_case(b"age");
        if dropped {
            continue;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        let start = head.len();
        head.extend_from_slice(h.value.of(buf));
        if etag.is_empty() && name.eq_ignore_ascii_case(b"etag") {
            // Heads are bounded by `Limits::max_head`, far below u32::MAX.
            etag = Span {
                start: start as u32,
                end: head.len() as u32,
            };
        }
        head.extend_from_slice(b"\r\n");
    }
    (Bytes::from(head), fields_at, etag)
}
