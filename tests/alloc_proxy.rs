//! A keep-alive GET through the proxy allocates nothing in steady state (issue #5): the
//! gateway runs in this process with a counting global allocator, between a client and an
//! upstream that themselves allocate nothing while the count runs (fixed buffers, static
//! messages), so every allocation counted is the worker's. The upstream connection is kept for
//! the whole run: opening one (after `max_requests`, 10,000 by default) allocates its socket
//! state and buffers, about nine allocations per connection, not per request. The same holds
//! for a 1 MiB download, relayed through a large buffer the worker lends from its pool.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ringgate::config;
use ringgate::server::Server;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALONE: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
const REQUEST: &[u8] =
    b"GET /items/7?full=1 HTTP/1.1\r\nHost: api\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
/// A download large enough to be relayed through a buffer the worker lends.
const LARGE_REQUEST: &[u8] = b"GET /large HTTP/1.1\r\nHost: api\r\n\r\n";
const LARGE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
static LARGE_BODY: [u8; 1 << 20] = [b'x'; 1 << 20];

/// Reads one message ending in `\r\n\r\n` plus `body` bytes into `buf`; false at EOF.
fn read_message(s: &mut TcpStream, buf: &mut [u8], body: usize) -> bool {
    let mut have = 0;
    loop {
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if have >= end + 4 + body {
                return true;
            }
        }
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
    }
}

/// A keep-alive upstream answering every request with `RESPONSE`, from a fixed buffer.
fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while read_message(&mut s, &mut buf, 0) {
                    let sent = if buf.starts_with(b"GET /large ") {
                        s.write_all(LARGE_HEAD)
                            .and_then(|()| s.write_all(&LARGE_BODY))
                    } else {
                        s.write_all(RESPONSE)
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The length of the whole response at the start of `buf`, once its head is there: the head
/// and its Content-Length.
fn response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    })?;
    Some(end + length)
}

/// A one-worker gateway on `driver` in this process, proxying everything to a new upstream.
fn gateway(driver: &str) -> Server {
    let up = upstream();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npin = false\ndriver = \"{driver}\"\n\
         [upstreams.api]\ntargets = [\"{up}\"]\nmax_requests = 1000000\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
    );
    Server::start(config::parse(&toml, "alloc.toml").unwrap()).unwrap()
}

/// Allocations counted over `counted` exchanges of `request` through the proxy, after
/// `warm_up` of them.
fn steady_state_allocations(driver: &str, request: &[u8], warm_up: usize, counted: usize) -> usize {
    // The count is the whole process's: one measurement at a time (the test harness runs
    // tests on parallel threads).
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let server = gateway(driver);
    let mut client = TcpStream::connect(server.addrs[0]).unwrap();
    client.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 2 << 20];
    // The gateway adds its own fields to the response: learn its length once.
    client.write_all(request).unwrap();
    let mut have = 0;
    let len = loop {
        match client.read(&mut buf[have..]) {
            Ok(0) | Err(_) => panic!("the gateway closed the connection"),
            Ok(n) => have += n,
        }
        if let Some(len) = response_len(&buf[..have]).filter(|&len| have >= len) {
            break len;
        }
    };
    let mut exchange = |client: &mut TcpStream| {
        client.write_all(request).unwrap();
        let mut have = 0;
        while have < len {
            match client.read(&mut buf[have..len]) {
                Ok(0) | Err(_) => panic!("the gateway closed the connection"),
                Ok(n) => have += n,
            }
        }
        assert_eq!(&buf[9..12], b"200");
    };
    // Warm up: buffers, pools, timer wheel and maps reach their working size.
    for _ in 0..warm_up {
        exchange(&mut client);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..counted {
        exchange(&mut client);
    }
    let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(client);
    assert!(server.shutdown(std::time::Duration::from_secs(5)));
    counted
}

#[test]
fn a_keep_alive_get_through_the_proxy_allocates_nothing() {
    for driver in ["io_uring", "epoll"] {
        let counted = steady_state_allocations(driver, REQUEST, 2_000, 10_000);
        assert_eq!(
            counted, 0,
            "{driver}: {counted} allocations in 10,000 proxied GETs"
        );
    }
}

/// A 1 MiB download goes through a large buffer the worker lends and takes back: once the
/// pool has one, further downloads allocate nothing either.
#[test]
fn a_large_download_through_the_proxy_allocates_nothing() {
    for driver in ["io_uring", "epoll"] {
        let counted = steady_state_allocations(driver, LARGE_REQUEST, 20, 200);
        assert_eq!(
            counted, 0,
            "{driver}: {counted} allocations in 200 proxied 1 MiB downloads"
        );
    }
}

/// Allocations counted over `counted` connections that each send one `Connection: close`
/// request and read the answer to the gateway's close, after `warm_up` of them.
fn allocations_per_new_connection(driver: &str, warm_up: usize, counted: usize) -> f64 {
    const CLOSE: &[u8] = b"GET /items/7 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let server = gateway(driver);
    let addr = server.addrs[0];
    let mut buf = [0u8; 4096];
    let mut connection = || {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(CLOSE).unwrap();
        let mut have = 0;
        loop {
            match client.read(&mut buf[have..]) {
                Ok(0) => break,
                Ok(n) => have += n,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
        assert!(buf[..have].starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(buf[..have].ends_with(b"hello"));
    };
    for _ in 0..warm_up {
        connection();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..counted {
        connection();
    }
    let counted_allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(server.shutdown(std::time::Duration::from_secs(5)));
    counted_allocations as f64 / counted as f64
}

/// A new connection takes its buffers, heads, scratch and address text from the worker's
/// spares: 16 allocations per proxied `Connection: close` request before, 5 now. What is left
/// is the runtime's: the connection's task, its descriptor's shared state, its two timers
/// (the client's head, the upstream's response head; each holds the task's waker) and the
/// close operation.
#[test]
fn a_new_connection_allocates_only_the_runtimes_state() {
    for driver in ["io_uring", "epoll"] {
        let per_connection = allocations_per_new_connection(driver, 200, 1_000);
        assert!(
            per_connection <= 5.0,
            "{driver}: {per_connection:.2} allocations per connection"
        );
    }
}
