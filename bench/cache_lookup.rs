//! `cargo bench --bench cache_lookup`: `Cache::lookup` on a shard holding 10,000 entries
//! (8,000 URLs without Vary, 1,000 with `Vary: Accept-Encoding` in two variants each) for a
//! hit, a miss, and a hit on a varied URL, with browser-like request heads.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use ringgate::cache::{Cache, CacheConfig, Lookup};
use ringgate::http::{Limits, RequestHead, ResponseHead};

fn request(path: &str, encoding: &str) -> (Vec<u8>, RequestHead) {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux \
         x86_64)\r\nAccept: application/json\r\nAccept-Encoding: {encoding}\r\nAccept-Language: \
         en-US,en;q=0.9\r\nConnection: keep-alive\r\n\r\n"
    )
    .into_bytes();
    let mut head = RequestHead::new(&Limits::DEFAULT);
    head.parse(&raw, &Limits::DEFAULT)
        .expect("the bench's requests parse");
    (raw, head)
}

fn response(vary: bool) -> (Vec<u8>, ResponseHead) {
    let raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\
         Cache-Control: public, max-age=3600\r\nETag: \"abc123\"\r\n\
         Date: Mon, 23 Nov 2026 01:00:00 GMT\r\n{}\r\n",
        if vary {
            "Vary: Accept-Encoding\r\n"
        } else {
            ""
        }
    )
    .into_bytes();
    let mut head = ResponseHead::new(&Limits::DEFAULT);
    head.parse(&raw, &Limits::DEFAULT)
        .expect("the bench's responses parse");
    (raw, head)
}

fn fill(cache: &mut Cache, path: &str, encoding: &str, vary: bool, now: Instant) {
    let (buf, req) = request(path, encoding);
    let Lookup::Miss(key) = cache.lookup(&buf, &req, now) else {
        panic!("{path} is already stored")
    };
    let (rbuf, resp) = response(vary);
    let admission = cache
        .admit(&buf, &req, &rbuf, &resp, None, now)
        .expect("the bench's responses are admitted");
    cache.store(key, admission, Bytes::from(vec![b'x'; 1024]), now);
}

fn bench(c: &mut Criterion) {
    let mut cache = Cache::new(CacheConfig {
        memory: 64 << 20,
        max_object: 1 << 20,
        default_ttl: None,
    });
    let t0 = Instant::now();
    for i in 0..8_000 {
        fill(
            &mut cache,
            &format!("/v1/items/{i}?page=1"),
            "gzip",
            false,
            t0,
        );
    }
    for i in 0..1_000 {
        for encoding in ["gzip, deflate, br", "identity"] {
            fill(
                &mut cache,
                &format!("/v1/assets/{i}.js"),
                encoding,
                true,
                t0,
            );
        }
    }
    assert_eq!(cache.stats().entries, 10_000);
    let now = t0 + Duration::from_secs(1);

    let cases = [
        ("hit", request("/v1/items/4321?page=1", "gzip")),
        ("miss", request("/v1/items/4321?page=2", "gzip")),
        (
            "vary_hit",
            request("/v1/assets/777.js", "gzip, deflate, br"),
        ),
    ];
    let mut group = c.benchmark_group("cache_lookup");
    for (name, (buf, req)) in &cases {
        // Checked once, so that each timing is of the outcome it is named after.
        let outcome = cache.lookup(buf, req, now);
        let expected = if *name == "miss" {
            matches!(outcome, Lookup::Miss(_))
        } else {
            matches!(outcome, Lookup::Hit(_))
        };
        assert!(expected, "{name}: {outcome:?}");
        group.bench_function(*name, |b| {
            b.iter(|| cache.lookup(black_box(buf), black_box(req), black_box(now)))
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
