//! `cargo bench --bench http_parse`: ringgate's head parser (which extracts the framing facts
//! in the same pass) against httparse followed by the same extraction over its output, on a
//! corpus of realistic heads; ends with a table of ns/head, GB/s and the ratio per entry.

#[path = "../tests/common/oracle.rs"]
mod oracle;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use ringgate::http::{Framing, Limits, Method, RequestHead, ResponseHead, Status};

const SHORT_GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: api.example.com\r\n\r\n";

const BROWSER_GET: &[u8] = b"GET /products/search?q=running+shoes&size=42&sort=price_asc HTTP/1.1\r\n\
Host: shop.example.com\r\n\
Connection: keep-alive\r\n\
Cache-Control: max-age=0\r\n\
sec-ch-ua: \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-Fetch-Dest: document\r\n\
Referer: https://shop.example.com/products?category=shoes\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n\
Cookie: session_id=9f8e7d6c5b4a39281706f5e4d3c2b1a0; cart=eyJpdGVtcyI6WzEyMyw0NTZdfQ; _ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; consent=analytics%3Dtrue%26ads%3Dfalse\r\n\r\n";

const API_POST: &[u8] = b"POST /v1/orders HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: example-sdk/2.4.1 (python 3.12)\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
Content-Length: 348\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwic2NvcGUiOiJvcmRlcnM6d3JpdGUiLCJleHAiOjE3OTk5OTk5OTl9.c2lnbmF0dXJlLWJ5dGVzLWdvLWhlcmU\r\n\
X-API-Key: ak_live_5f4dcc3b5aa765d61d8327deb882cf99\r\n\
X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736\r\n\
Idempotency-Key: 0b1e8c6a-2f7d-4c1e-9a3b-5d6f7e8a9b0c\r\n\
Expect: 100-continue\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Mon, 23 Nov 2026 01:00:00 GMT\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 1534\r\n\
Connection: keep-alive\r\n\
Cache-Control: private, max-age=60\r\n\
ETag: \"33a64df551425fcc55e4d42a148795d9f25f89d4\"\r\n\
Vary: Accept-Encoding, Authorization\r\n\
X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736\r\n\
Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n\
Server: upstream/1.0\r\n\r\n";

const CORPUS: [(&str, &[u8]); 4] = [
    ("short_get", SHORT_GET),
    ("browser_get", BROWSER_GET),
    ("api_post", API_POST),
    ("response", RESPONSE),
];

fn ours_request(head: &mut RequestHead, raw: &[u8]) -> (usize, Framing, bool) {
    match head.parse(raw, &Limits::DEFAULT) {
        Ok(Status::Complete(n)) => (n, head.framing(), head.keep_alive()),
        other => panic!("{other:?}"),
    }
}

fn theirs_request(raw: &[u8]) -> (usize, Option<u64>, bool) {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(n)) = req.parse(raw) else {
        panic!()
    };
    let facts = oracle::httparse_facts(&req);
    (
        n,
        facts.content_length,
        facts.chunked && !facts.close && facts.host.is_some(),
    )
}

fn ours_response(head: &mut ResponseHead, raw: &[u8]) -> (usize, Framing, bool) {
    match head.parse(raw, &Limits::DEFAULT) {
        Ok(Status::Complete(n)) => (n, head.framing(Method::Get), head.keep_alive()),
        other => panic!("{other:?}"),
    }
}

/// The response-side extraction a proxy on httparse needs: status, Content-Length, chunked,
/// Connection tokens.
fn theirs_response(raw: &[u8]) -> (usize, Option<u64>, bool) {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut res = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(n)) = res.parse(raw) else {
        panic!()
    };
    let (mut length, mut chunked, mut close) = (None, false, false);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let body = res.code.is_some_and(|c| c >= 200 && c != 204 && c != 304);
    (n, length.filter(|_| body), chunked || close)
}

fn bench(c: &mut Criterion) {
    let mut request = RequestHead::new(&Limits::DEFAULT);
    let mut response = ResponseHead::new(&Limits::DEFAULT);
    for (name, raw) in CORPUS {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(raw.len() as u64));
        if name == "response" {
            group.bench_function(BenchmarkId::from_parameter("ringgate"), |b| {
                b.iter(|| ours_response(&mut response, black_box(raw)))
            });
            group.bench_function(BenchmarkId::from_parameter("httparse"), |b| {
                b.iter(|| theirs_response(black_box(raw)))
            });
        } else {
            group.bench_function(BenchmarkId::from_parameter("ringgate"), |b| {
                b.iter(|| ours_request(&mut request, black_box(raw)))
            });
            group.bench_function(BenchmarkId::from_parameter("httparse"), |b| {
                b.iter(|| theirs_request(black_box(raw)))
            });
        }
        group.finish();
    }
}

/// Criterion's median estimate (ns) for one benchmark, from the run that just finished.
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let path = format!(
        "{}/target/criterion/{group}/{id}/new/estimates.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    println!("\n| head | bytes | ringgate ns | ringgate GB/s | httparse+extract ns | httparse+extract GB/s | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (name, raw) in CORPUS {
        let (Some(ours), Some(theirs)) = (mean_ns(name, "ringgate"), mean_ns(name, "httparse"))
        else {
            continue;
        };
        let gbps = |ns: f64| raw.len() as f64 / ns;
        println!(
            "| {name} | {} | {ours:.1} | {:.2} | {theirs:.1} | {:.2} | {:.2}x |",
            raw.len(),
            gbps(ours),
            gbps(theirs),
            theirs / ours
        );
    }
}
