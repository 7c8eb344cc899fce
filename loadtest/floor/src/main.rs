//! The floor under ringgate's user time: what a keep-alive request costs on monoio when the
//! program does no HTTP work at all. One upstream connection per client connection (no pool),
//! each read taken to hold one whole request or response (true for wrk's small GETs and a
//! fixed-response backend on loopback), bytes relayed unchanged; or, with `direct`, a fixed
//! answer. No parsing, routing, header rewriting, timers, metrics or limits: never a gateway,
//! only a bound (docs/performance.md, "Sixth pass").
//!
//! `ringgate-floor LISTEN BACKEND [relay|direct|codec] [io_uring|epoll|raw|exec] [CORE]`:
//! `raw` is the same relay without monoio (`raw.rs`), the floor under the runtime's floor;
//! `exec` is it as async functions on an executor of our own (`exec.rs`); `codec` (raw and
//! exec only) puts both heads through ringgate's HTTP codec on the way (`codec.rs`).

mod codec;
mod exec;
mod raw;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: text/plain\r\n\
Content-Length: 19\r\n\r\nhello from gateway\n";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend)) = (args.get(1).cloned(), args.get(2).cloned()) else {
        eprintln!(
            "usage: ringgate-floor LISTEN BACKEND [relay|direct|codec] [io_uring|epoll|raw|exec] [CORE]"
        );
        std::process::exit(2);
    };
    let driver = args.get(4).map_or("io_uring", String::as_str);
    let mode = match (args.get(3).map_or("relay", String::as_str), driver) {
        ("relay", _) => raw::Mode::Relay,
        ("direct", _) => raw::Mode::Direct,
        ("codec", "raw" | "exec") => raw::Mode::Codec,
        (mode, driver) => {
            eprintln!("ringgate-floor: no mode {mode} on {driver} (codec is raw and exec only)");
            std::process::exit(2);
        }
    };
    let direct = mode == raw::Mode::Direct;
    let core = args.get(5).and_then(|c| c.parse().ok()).unwrap_or(0);
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    if driver == "raw" || driver == "exec" {
        let e = match driver {
            "raw" => raw::run(&listen, &backend, mode, ANSWER),
            _ => exec::run(&listen, &backend, mode, ANSWER),
        };
        eprintln!("ringgate-floor: {e}");
        std::process::exit(1);
    }
    let server = async move {
        let listener = TcpListener::bind(listen.as_str()).expect("bind LISTEN");
        while let Ok((client, _)) = listener.accept().await {
            let backend = backend.clone();
            monoio::spawn(async move {
                let upstream = match direct {
                    true => None,
                    false => match TcpStream::connect(backend.as_str()).await {
                        Ok(up) => Some(up),
                        Err(e) => return eprintln!("connect {backend}: {e}"),
                    },
                };
                serve(client, upstream).await;
            });
        }
    };
    if driver == "epoll" {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(server);
    } else {
        // The ring as ringgate sets it up (src/worker/mod.rs): COOP_TASKRUN + SINGLE_ISSUER.
        let mut ring = io_uring::IoUring::builder();
        ring.setup_coop_taskrun().setup_single_issuer();
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .uring_builder(ring)
            .build()
            .expect("io_uring runtime")
            .block_on(server);
    }
}

/// Request in, request up, response back, response out, until either side closes.
async fn serve(mut client: TcpStream, mut upstream: Option<TcpStream>) {
    let _ = client.set_nodelay(true);
    if let Some(up) = &upstream {
        let _ = up.set_nodelay(true);
    }
    let (mut request, mut response) = (Vec::with_capacity(16384), Vec::with_capacity(16384));
    loop {
        request.clear();
        let (read, buf) = client.read(request).await;
        request = buf;
        if !matches!(read, Ok(1..)) {
            return;
        }
        response.clear();
        match &mut upstream {
            None => response.extend_from_slice(ANSWER),
            Some(up) => {
                let (sent, buf) = up.write_all(request).await;
                request = buf;
                if sent.is_err() {
                    return;
                }
                let (read, buf) = up.read(response).await;
                response = buf;
                if !matches!(read, Ok(1..)) {
                    return;
                }
            }
        }
        let (sent, buf) = client.write_all(response).await;
        response = buf;
        if sent.is_err() {
            return;
        }
    }
}
