//! The codec allocates nothing per message: parse heads into reused structs, decode chunked
//! bodies and write forwarded heads into a reused buffer, with a counting global allocator
//! watching. It counts per thread, so the test harness's own threads do not count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringgate::http::{encode, BodyDecoder, Limits, Method, RequestHead, ResponseHead, Status};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // try_with: the allocator also runs while thread-locals are being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUEST: &[u8] = b"POST /v1/orders?x=1 HTTP/1.1\r\nHost: api.example\r\n\
Authorization: Bearer abc.def.ghi\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
X-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 2\r\nCache-Control: no-store\r\nDate: Mon, 23 Nov 2026 01:00:00 GMT\r\n\r\n{}";

#[test]
fn parsing_decoding_and_encoding_allocate_nothing_per_message() {
    let limits = Limits::DEFAULT;
    let mut request = RequestHead::new(&limits);
    let mut response = ResponseHead::new(&limits);
    let mut out = Vec::with_capacity(4096);
    let mut messages = 0;
    let before = allocations();
    for _ in 0..10_000 {
        let Ok(Status::Complete(n)) = request.parse(REQUEST, &limits) else {
            panic!("request did not parse")
        };
        let mut body = BodyDecoder::new(request.framing(), &limits);
        let mut rest = &REQUEST[n..];
        while !body.is_done() {
            let d = body.decode(rest).expect("valid chunked body");
            rest = &rest[d.consumed..];
        }
        out.clear();
        let fwd = encode::Forward {
            path: request.path.of(REQUEST),
            host: b"127.0.0.1:9001",
            client_addr: b"127.0.0.1",
            proto: b"http",
            tunnel: false,
            extra: b"",
            omit: None,
        };
        encode::request_head(&mut out, REQUEST, &request, &fwd);
        let Ok(Status::Complete(_)) = response.parse(RESPONSE, &limits) else {
            panic!("response did not parse")
        };
        let reply = encode::Reply {
            body: encode::BodyOut::Length(2),
            keep_alive: true,
            client_version: request.version,
            tunnel: false,
            extra: b"",
            omit: None,
        };
        let _ = response.framing(Method::Post);
        encode::response_head(&mut out, RESPONSE, &response, &reply);
        encode::error(&mut out, 502, false);
        messages += 1;
    }
    let allocations = allocations() - before;
    assert_eq!(messages, 10_000);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for {messages} messages"
    );
}
