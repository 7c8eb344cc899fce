//! The response-cache shard, sans-io: request and response heads parsed from raw bytes, time
//! passed in. A counting global allocator (per thread, as in `tests/alloc.rs`) shows that
//! lookups allocate nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringgate::cache::{Admission, Cache, CacheConfig, Hit, Key, Lookup};
use ringgate::http::{Limits, RequestHead, ResponseHead, Status};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the allocator also runs while thread-locals are being torn down.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Req {
    buf: Vec<u8>,
    head: RequestHead,
}

/// A request `METHOD target` with the given field lines (`Name: value`, CRLF added).
fn req(method: &str, target: &str, fields: &[&str]) -> Req {
    let mut raw = format!("{method} {target} HTTP/1.1\r\n");
    if !fields
        .iter()
        .any(|f| f.to_ascii_lowercase().starts_with("host:"))
    {
        raw.push_str("Host: example.com\r\n");
    }
    for f in fields {
        raw.push_str(f);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    let buf = raw.into_bytes();
    let mut head = RequestHead::new(&Limits::DEFAULT);
    assert!(matches!(
        head.parse(&buf, &Limits::DEFAULT),
        Ok(Status::Complete(_))
    ));
    Req { buf, head }
}

fn get(target: &str, fields: &[&str]) -> Req {
    req("GET", target, fields)
}

struct Resp {
    buf: Vec<u8>,
    head: ResponseHead,
}

/// A response head with status `status` and the given field lines.
fn resp(status: u16, fields: &[&str]) -> Resp {
    let mut raw = format!("HTTP/1.1 {status} Whatever\r\n");
    for f in fields {
        raw.push_str(f);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    let buf = raw.into_bytes();
    let mut head = ResponseHead::new(&Limits::DEFAULT);
    assert!(matches!(
        head.parse(&buf, &Limits::DEFAULT),
        Ok(Status::Complete(_))
    ));
    Resp { buf, head }
}

fn ok(fields: &[&str]) -> Resp {
    resp(200, fields)
}

const DATE: &str = "Date: Mon, 23 Nov 2026 01:00:00 GMT";

fn config() -> CacheConfig {
    CacheConfig {
        memory: 1 << 20,
        max_object: 64 * 1024,
        default_ttl: None,
    }
}

fn lookup(cache: &mut Cache, r: &Req, now: Instant) -> Lookup {
    cache.lookup(&r.buf, &r.head, now)
}

fn admit(
    cache: &Cache,
    r: &Req,
    p: &Resp,
    ttl: Option<Duration>,
    now: Instant,
) -> Option<Admission> {
    cache.admit(&r.buf, &r.head, &p.buf, &p.head, ttl, now)
}

fn miss(cache: &mut Cache, r: &Req, now: Instant) -> Key {
    match lookup(cache, r, now) {
        Lookup::Miss(key) => key,
        other => panic!("expected a miss, got {other:?}"),
    }
}

fn hit(cache: &mut Cache, r: &Req, now: Instant) -> Hit {
    match lookup(cache, r, now) {
        Lookup::Hit(hit) => hit,
        other => panic!("expected a hit, got {other:?}"),
    }
}

fn not_modified(cache: &mut Cache, r: &Req, now: Instant) -> Hit {
    match lookup(cache, r, now) {
        Lookup::NotModified(hit) => hit,
        other => panic!("expected not-modified, got {other:?}"),
    }
}

fn is_miss(cache: &mut Cache, r: &Req, now: Instant) -> bool {
    matches!(lookup(cache, r, now), Lookup::Miss(_))
}

/// Miss, admit, store: whether the response was admitted (and so stored, if it fits).
fn fill(cache: &mut Cache, r: &Req, p: &Resp, body: &'static [u8], now: Instant) -> bool {
    fill_ttl(cache, r, p, body, None, now)
}

fn fill_ttl(
    cache: &mut Cache,
    r: &Req,
    p: &Resp,
    body: &'static [u8],
    ttl: Option<Duration>,
    now: Instant,
) -> bool {
    let key = miss(cache, r, now);
    match admit(cache, r, p, ttl, now) {
        Some(admission) => {
            cache.store(key, admission, Bytes::from_static(body), now);
            true
        }
        None => false,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn miss_then_hit() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/a?x=1", &[]);
    assert!(fill(
        &mut cache,
        &r,
        &ok(&["Cache-Control: max-age=60", "Content-Length: 5"]),
        b"hello",
        t0
    ));
    let h = hit(&mut cache, &r, t0 + secs(1));
    assert_eq!(&h.body[..], b"hello");
    assert_eq!(h.age, 1);
    assert!(h.head.starts_with(b"HTTP/1.1 200 Whatever\r\n"));
    let s = cache.stats();
    assert_eq!((s.entries, s.hits, s.misses), (1, 1, 1));
    assert!(s.bytes > 5);
    // Another query string is another URL.
    assert!(is_miss(&mut cache, &get("/a?x=2", &[]), t0));
}

#[test]
fn stored_head_keeps_end_to_end_fields_only() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/h", &[]);
    let p = ok(&[
        "Cache-Control: max-age=60",
        "Content-Type: text/plain",
        "Content-Length: 2",
        "Connection: keep-alive, X-Hop",
        "X-Hop: 1",
        "Keep-Alive: timeout=5",
        "Age: 3",
        "ETag: \"v1\"",
    ]);
    assert!(fill(&mut cache, &r, &p, b"hi", t0));
    let h = hit(&mut cache, &r, t0);
    assert_eq!(
        &h.head[..],
        b"HTTP/1.1 200 Whatever\r\nCache-Control: max-age=60\r\nContent-Type: text/plain\r\n\
ETag: \"v1\"\r\n"
    );
    assert_eq!(h.age, 3, "the Age it arrived with");
    assert_eq!(
        &h.fields()[..],
        &h.head[b"HTTP/1.1 200 Whatever\r\n".len()..]
    );
}

#[test]
fn a_hit_shares_the_stored_body_and_allocates_nothing() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/big", &[]);
    let key = miss(&mut cache, &r, t0);
    let admission = admit(&cache, &r, &ok(&["Cache-Control: max-age=60"]), None, t0).unwrap();
    let body = Bytes::from(vec![7u8; 10_000]);
    let ptr = body.as_ptr();
    cache.store(key, admission, body, t0);

    let counted = allocations();
    let other = get("/other", &[]);
    assert!(allocations() > counted, "the allocator counts");
    let before = allocations();
    let first = hit(&mut cache, &r, t0);
    let second = hit(&mut cache, &r, t0);
    let missed = lookup(&mut cache, &other, t0);
    assert_eq!(allocations() - before, 0, "lookups allocated");
    assert_eq!(first.body.as_ptr(), ptr);
    assert_eq!(second.body.as_ptr(), ptr);
    assert_eq!(first.head.as_ptr(), second.head.as_ptr());
    assert!(matches!(missed, Lookup::Miss(_)));
}

#[test]
fn entries_expire() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/t", &[]);
    assert!(fill(
        &mut cache,
        &r,
        &ok(&["Cache-Control: max-age=60"]),
        b"x",
        t0
    ));
    assert_eq!(hit(&mut cache, &r, t0 + secs(59)).age, 59);
    assert!(is_miss(&mut cache, &r, t0 + secs(60)));
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes, s.expired), (0, 0, 1));
}

#[test]
fn age_counts_the_upstream_age_and_the_upstream_delay() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/age", &[]);
    let key = miss(&mut cache, &r, t0);
    // The response arrives 2 s after the lookup, already 10 s old.
    let p = ok(&["Cache-Control: max-age=60", "Age: 10"]);
    let admission = admit(&cache, &r, &p, None, t0 + secs(2)).unwrap();
    assert_eq!(admission.expires, t0 + secs(2 + 50));
    cache.store(key, admission, Bytes::from_static(b"x"), t0 + secs(3));
    assert_eq!(hit(&mut cache, &r, t0 + secs(2)).age, 12);
    assert_eq!(hit(&mut cache, &r, t0 + secs(49)).age, 59);
    assert!(is_miss(&mut cache, &r, t0 + secs(50)));
    // Already stale on arrival: not admitted.
    let old = ok(&["Cache-Control: max-age=60", "Age: 60"]);
    assert!(admit(&cache, &r, &old, None, t0).is_none());
}

#[test]
fn no_store_and_set_cookie_are_not_cached() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/n", &[]);
    for fields in [
        &["Cache-Control: no-store, max-age=60"][..],
        &["Cache-Control: max-age=60", "Set-Cookie: s=1"],
        &["Cache-Control: private, max-age=60"],
        &["Cache-Control: no-cache, max-age=60"],
        &[
            "Cache-Control: max-age=60",
            "cache-control: no-cache=\"Set-Cookie, X\"",
        ],
    ] {
        assert!(!fill(&mut cache, &r, &ok(fields), b"x", t0), "{fields:?}");
    }
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn request_directives() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&["Cache-Control: max-age=60"]);
    // A no-store request stores nothing, and a miss for it is not worth a key.
    let no_store = get("/r", &["Cache-Control: no-store"]);
    assert!(matches!(
        lookup(&mut cache, &no_store, t0),
        Lookup::Uncacheable
    ));
    assert!(admit(&cache, &no_store, &p, None, t0).is_none());
    // Once stored, it may be answered from the cache.
    let r = get("/r", &[]);
    assert!(fill(&mut cache, &r, &p, b"x", t0));
    hit(&mut cache, &no_store, t0);
    // no-cache, Pragma (without Cache-Control) and a max-age the entry is past: a miss that
    // refreshes the entry.
    assert!(is_miss(
        &mut cache,
        &get("/r", &["Cache-Control: no-cache"]),
        t0
    ));
    assert!(is_miss(&mut cache, &get("/r", &["Pragma: no-cache"]), t0));
    hit(
        &mut cache,
        &get("/r", &["Pragma: no-cache", "Cache-Control: max-age=5"]),
        t0,
    );
    assert!(is_miss(
        &mut cache,
        &get("/r", &["Cache-Control: max-age=5"]),
        t0 + secs(6)
    ));
    hit(
        &mut cache,
        &get("/r", &["Cache-Control: max-age=5"]),
        t0 + secs(5),
    );
}

#[test]
fn authorization_needs_public_or_s_maxage() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let auth = ["Authorization: Bearer abc"];
    let r = get("/private", &auth);
    assert!(!fill(
        &mut cache,
        &r,
        &ok(&["Cache-Control: max-age=60"]),
        b"x",
        t0
    ));
    let r = get("/public", &auth);
    assert!(fill(
        &mut cache,
        &r,
        &ok(&["Cache-Control: public, max-age=60"]),
        b"x",
        t0
    ));
    hit(&mut cache, &r, t0);
    let r = get("/shared", &auth);
    assert!(fill(
        &mut cache,
        &r,
        &ok(&["Cache-Control: s-maxage=60"]),
        b"x",
        t0
    ));
    hit(&mut cache, &r, t0);
    assert_eq!(cache.stats().entries, 2);
}

#[test]
fn vary_splits_entries() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&["Cache-Control: max-age=60", "Vary: Accept-Encoding"]);
    let gzip = get("/v", &["Accept-Encoding: gzip"]);
    let br = get("/v", &["accept-encoding: br"]);
    assert!(fill(&mut cache, &gzip, &p, b"gzipped", t0));
    assert!(fill(&mut cache, &br, &p, b"brotli", t0));
    assert_eq!(cache.stats().entries, 2);
    assert_eq!(&hit(&mut cache, &gzip, t0).body[..], b"gzipped");
    assert_eq!(&hit(&mut cache, &br, t0).body[..], b"brotli");
    // Neither: another variant. Two lines combine like one comma-separated line.
    assert!(is_miss(&mut cache, &get("/v", &[]), t0));
    let lines = get("/v", &["Accept-Encoding: gzip", "Accept-Encoding: br"]);
    assert!(fill(&mut cache, &lines, &p, b"both", t0));
    let combined = get("/v", &["Accept-Encoding: gzip,br"]);
    assert_eq!(&hit(&mut cache, &combined, t0).body[..], b"both");
    // Storing a variant again replaces it.
    assert!(fill(
        &mut cache,
        &get("/v", &["Accept-Encoding: gzip", "Cache-Control: no-cache"]),
        &p,
        b"gzip2",
        t0
    ));
    assert_eq!(&hit(&mut cache, &gzip, t0).body[..], b"gzip2");
    assert_eq!(cache.stats().entries, 3);
    // A response that varies on something else replaces the URL's variants.
    let lang = get("/v", &["Accept-Language: de", "Cache-Control: no-cache"]);
    let p2 = ok(&["Cache-Control: max-age=60", "Vary: accept-language"]);
    assert!(fill(&mut cache, &lang, &p2, b"deutsch", t0));
    assert_eq!(cache.stats().entries, 1);
    assert_eq!(
        &hit(&mut cache, &get("/v", &["Accept-Language: de"]), t0).body[..],
        b"deutsch"
    );
}

#[test]
fn vary_star_is_not_cached() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/star", &[]);
    let p = ok(&["Cache-Control: max-age=60", "Vary: Accept, *"]);
    assert!(!fill(&mut cache, &r, &p, b"x", t0));
}

#[test]
fn misses_of_one_url_share_a_key_whatever_the_variant() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let a = miss(&mut cache, &get("/k", &["Accept-Encoding: gzip"]), t0);
    let b = miss(
        &mut cache,
        &get("/k", &["Accept-Encoding: br"]),
        t0 + secs(1),
    );
    let c = miss(&mut cache, &get("/k2", &[]), t0);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn lifetime_sources_in_order() {
    let t0 = Instant::now();
    let cache = Cache::new(config());
    let r = get("/l", &[]);
    let expires = |fields: &[&str], ttl: Option<Duration>| {
        admit(&cache, &r, &ok(fields), ttl, t0).map(|a| a.expires - t0)
    };
    let e30 = "Expires: Mon, 23 Nov 2026 01:00:30 GMT";
    assert_eq!(
        expires(&["Cache-Control: max-age=100, s-maxage=10"], None),
        Some(secs(10))
    );
    assert_eq!(
        expires(&["Cache-Control: max-age=100", DATE, e30], None),
        Some(secs(100))
    );
    assert_eq!(expires(&[DATE, e30], None), Some(secs(30)));
    assert_eq!(expires(&[DATE, e30], Some(secs(5))), Some(secs(30)));
    // Unreadable, in the past, or without a Date to measure from: stale.
    assert_eq!(expires(&[DATE, "Expires: 0"], Some(secs(5))), None);
    assert_eq!(
        expires(&[DATE, "Expires: Mon, 23 Nov 2026 00:59:00 GMT"], None),
        None
    );
    assert_eq!(expires(&[e30], Some(secs(5))), None);
    assert_eq!(
        expires(&["Cache-Control: max-age=abc"], Some(secs(5))),
        None
    );
    // No lifetime given: the route's TTL, else the shard's, else not stored.
    assert_eq!(expires(&[DATE], Some(secs(5))), Some(secs(5)));
    assert_eq!(expires(&["Cache-Control: public"], None), None);
    let with_default = Cache::new(CacheConfig {
        default_ttl: Some(secs(7)),
        ..config()
    });
    let p = ok(&[DATE]);
    let a = with_default.admit(&r.buf, &r.head, &p.buf, &p.head, None, t0);
    assert_eq!(a.map(|a| a.expires - t0), Some(secs(7)));
    let a = with_default.admit(&r.buf, &r.head, &p.buf, &p.head, Some(secs(3)), t0);
    assert_eq!(a.map(|a| a.expires - t0), Some(secs(3)));
}

#[test]
fn s_maxage_wins_over_max_age_when_serving() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let r = get("/s", &[]);
    let p = ok(&["Cache-Control: max-age=100, s-maxage=10"]);
    assert!(fill(&mut cache, &r, &p, b"x", t0));
    hit(&mut cache, &r, t0 + secs(9));
    assert!(is_miss(&mut cache, &r, t0 + secs(10)));
}

#[test]
fn status_codes() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    for (i, status) in [200u16, 203, 204, 300, 301, 308, 404, 410]
        .into_iter()
        .enumerate()
    {
        let r = get(&format!("/s{i}"), &[]);
        assert!(fill(
            &mut cache,
            &r,
            &resp(status, &["Cache-Control: max-age=60"]),
            b"",
            t0
        ));
        hit(&mut cache, &r, t0);
    }
    for status in [201u16, 206, 302, 307, 403, 500, 503] {
        let r = get("/no", &[]);
        assert!(!fill(
            &mut cache,
            &r,
            &resp(status, &["Cache-Control: max-age=60"]),
            b"",
            t0
        ));
    }
}

#[test]
fn methods_and_head() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&["Cache-Control: max-age=60"]);
    assert!(matches!(
        lookup(&mut cache, &req("POST", "/m", &[]), t0),
        Lookup::Uncacheable
    ));
    assert!(matches!(
        lookup(&mut cache, &req("OPTIONS", "*", &[]), t0),
        Lookup::Uncacheable
    ));
    // A HEAD miss stores nothing (its response has no body)...
    let head = req("HEAD", "/m", &[]);
    assert!(matches!(lookup(&mut cache, &head, t0), Lookup::Uncacheable));
    assert!(admit(&cache, &head, &p, None, t0).is_none());
    // ...but is answered from the GET entry.
    assert!(fill(&mut cache, &get("/m", &[]), &p, b"body", t0));
    assert_eq!(&hit(&mut cache, &head, t0).body[..], b"body");
}

#[test]
fn host_is_case_insensitive_and_absolute_form_is_the_same_url() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&["Cache-Control: max-age=60"]);
    assert!(fill(
        &mut cache,
        &get("/a", &["Host: Example.COM:8080"]),
        &p,
        b"x",
        t0
    ));
    hit(&mut cache, &get("/a", &["Host: example.com:8080"]), t0);
    hit(
        &mut cache,
        &get("http://EXAMPLE.com:8080/a", &["Host: ignored"]),
        t0,
    );
    assert!(is_miss(&mut cache, &get("/a", &["Host: example.com"]), t0));
    // An empty absolute-form path is `/`.
    assert!(fill(&mut cache, &get("/?q", &[]), &p, b"root", t0));
    assert_eq!(
        &hit(&mut cache, &get("http://example.com?q", &[]), t0).body[..],
        b"root"
    );
}

#[test]
fn conditional_requests() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&[
        "Cache-Control: max-age=60",
        "ETag: W/\"v1\"",
        "Last-Modified: Mon, 23 Nov 2026 00:00:00 GMT",
        DATE,
    ]);
    assert!(fill(&mut cache, &get("/c", &[]), &p, b"body", t0));
    for inm in [
        "If-None-Match: \"v1\"",
        "If-None-Match: W/\"v1\"",
        "If-None-Match: \"a,b\", \"v0\" , W/\"v1\"",
        "If-None-Match: *",
    ] {
        let h = not_modified(&mut cache, &get("/c", &[inm]), t0);
        assert_eq!(&h.body[..], b"body", "{inm}");
    }
    for inm in [
        "If-None-Match: \"v2\"",
        "If-None-Match: v1",
        "If-None-Match: \"v1",
    ] {
        hit(&mut cache, &get("/c", &[inm]), t0);
    }
    let since = |d: &str| format!("If-Modified-Since: {d}");
    not_modified(
        &mut cache,
        &get("/c", &[&since("Mon, 23 Nov 2026 00:00:00 GMT")]),
        t0,
    );
    not_modified(
        &mut cache,
        &get("/c", &[&since("Tue, 24 Nov 2026 00:00:00 GMT")]),
        t0,
    );
    hit(
        &mut cache,
        &get("/c", &[&since("Sun, 22 Nov 2026 23:59:59 GMT")]),
        t0,
    );
    hit(&mut cache, &get("/c", &[&since("yesterday")]), t0);
    // If-None-Match decides when present.
    let both = get(
        "/c",
        &[
            "If-None-Match: \"v2\"",
            &since("Tue, 24 Nov 2026 00:00:00 GMT"),
        ],
    );
    hit(&mut cache, &both, t0);
    // Not for a stale entry.
    assert!(is_miss(
        &mut cache,
        &get("/c", &["If-None-Match: \"v1\""]),
        t0 + secs(60)
    ));
}

#[test]
fn if_modified_since_falls_back_to_date() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    assert!(fill(
        &mut cache,
        &get("/d", &[]),
        &ok(&["Cache-Control: max-age=60", DATE]),
        b"x",
        t0
    ));
    let ims = get("/d", &["If-Modified-Since: Mon, 23 Nov 2026 01:00:00 GMT"]);
    not_modified(&mut cache, &ims, t0);
    let earlier = get("/d", &["If-Modified-Since: Mon, 23 Nov 2026 00:59:59 GMT"]);
    hit(&mut cache, &earlier, t0);
}

#[test]
fn memory_bound_holds_with_10_000_objects() {
    let memory = 1 << 20;
    let mut cache = Cache::new(CacheConfig { memory, ..config() });
    let t0 = Instant::now();
    let p = ok(&[
        "Cache-Control: max-age=600",
        "Content-Type: application/octet-stream",
    ]);
    static BODY: [u8; 1000] = [b'x'; 1000];
    for i in 0..10_000 {
        let r = get(&format!("/obj/{i}"), &[]);
        assert!(fill(&mut cache, &r, &p, &BODY, t0));
        let s = cache.stats();
        assert!(s.bytes <= memory, "{} > {memory} after {i}", s.bytes);
    }
    let s = cache.stats();
    assert!(s.entries > 500, "{s:?}");
    assert_eq!(s.evictions, 10_000 - s.entries as u64);
    // The newest object is there.
    hit(&mut cache, &get("/obj/9999", &[]), t0);
}

/// The reason for S3-FIFO over LRU: a hot set hit once, then 5,000 one-time URLs (seven
/// times what the shard holds) with no hit in between. An LRU would have evicted the hot set
/// after ~700 inserts; here the one-timers pass through the small queue and leave.
#[test]
fn a_scan_of_one_time_urls_does_not_flush_the_hot_set() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&["Cache-Control: max-age=600"]);
    static BODY: [u8; 1000] = [b'h'; 1000];
    let hot: Vec<Req> = (0..100).map(|i| get(&format!("/hot/{i}"), &[])).collect();
    for r in &hot {
        assert!(fill(&mut cache, r, &p, &BODY, t0));
        hit(&mut cache, r, t0);
    }
    for i in 0..5_000 {
        assert!(fill(
            &mut cache,
            &get(&format!("/scan/{i}"), &[]),
            &p,
            &BODY,
            t0
        ));
    }
    let s = cache.stats();
    assert!(s.evictions > 4_000 && s.entries < 1_000, "{s:?}");
    for r in &hot {
        hit(&mut cache, r, t0);
    }
}

#[test]
fn max_object_is_respected() {
    let mut cache = Cache::new(CacheConfig {
        max_object: 4,
        ..config()
    });
    let t0 = Instant::now();
    // Known from Content-Length: refused at admission.
    let r = get("/big", &[]);
    assert!(!fill(
        &mut cache,
        &r,
        &ok(&["Cache-Control: max-age=60", "Content-Length: 5"]),
        b"12345",
        t0
    ));
    // Chunked: refused when the body is stored.
    let chunked = ok(&["Cache-Control: max-age=60", "Transfer-Encoding: chunked"]);
    assert!(fill(&mut cache, &r, &chunked, b"12345", t0));
    assert!(is_miss(&mut cache, &r, t0));
    assert!(fill(&mut cache, &r, &chunked, b"1234", t0));
    hit(&mut cache, &r, t0);
    let s = cache.stats();
    assert_eq!((s.rejected_too_large, s.entries), (2, 1));
    // An entry larger than the whole shard is refused too.
    let mut tiny = Cache::new(CacheConfig {
        memory: 100,
        ..config()
    });
    assert!(fill(&mut tiny, &r, &chunked, b"1", t0));
    assert_eq!(
        (tiny.stats().entries, tiny.stats().rejected_too_large),
        (0, 1)
    );
}

#[test]
fn purge_removes_every_variant() {
    let mut cache = Cache::new(config());
    let t0 = Instant::now();
    let p = ok(&["Cache-Control: max-age=60", "Vary: Accept-Encoding"]);
    let gzip = get("/p?x", &["Accept-Encoding: gzip"]);
    let br = get("/p?x", &["Accept-Encoding: br"]);
    let other = get("/q", &[]);
    assert!(fill(&mut cache, &gzip, &p, b"1", t0));
    assert!(fill(&mut cache, &br, &p, b"2", t0));
    assert!(fill(&mut cache, &other, &p, b"3", t0));
    assert_eq!(cache.purge(b"Example.com", b"/p"), 0);
    assert_eq!(cache.purge(b"Example.com", b"/p?x"), 2);
    assert!(is_miss(&mut cache, &gzip, t0));
    assert!(is_miss(&mut cache, &br, t0));
    hit(&mut cache, &other, t0);
    assert_eq!(cache.purge(b"example.com", b"/q"), 1);
    let s = cache.stats();
    assert_eq!((s.entries, s.bytes), (0, 0));
}
