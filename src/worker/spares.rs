//! The worker's spare connection state: a receive buffer, a request head, the exchange
//! scratch and the client address text, handed to each connection it accepts and taken back
//! when that connection closes. Made fresh, they were eleven allocations and frees per
//! connection, and with the address text's formatting a third of the instructions a
//! `Connection: close` request cost (docs/performance.md, twelfth pass).

use std::cell::RefCell;

use crate::http::{Limits, RequestHead};
use crate::proxy::Scratch;
use crate::wire::Wire;

/// How many a worker keeps: each is about 45 KiB (two 16 KiB buffers, two heads' room for
/// `max_headers` fields, smaller buffers), so about 3 MiB per worker stay allocated after a
/// burst of connections; at most about 8 MiB if clients sent heads near `max_head` (a spare
/// keeps no buffer over 16 KiB).
pub const SPARE_MAX: usize = 64;

/// The longest IP address in text (IPv6 with an embedded IPv4 address).
const ADDR_TEXT_MAX: usize = 45;

/// What a connection needs besides its socket; boxed, so it moves as a pointer.
pub struct Kit {
    /// The client wire's receive buffer (taken by the wire while the connection lives).
    pub buf: Vec<u8>,
    pub head: RequestHead,
    pub scratch: Scratch,
    /// The client's IP in text form, for X-Forwarded-For and the access log.
    pub addr: Vec<u8>,
}

#[derive(Default)]
pub struct Spares {
    /// Boxed, as a connection holds its kit: a pointer in its task's state, moved as one.
    #[allow(clippy::vec_box)]
    kits: RefCell<Vec<Box<Kit>>>,
}

impl Spares {
    /// A spare kit, or a new one sized by `limits`.
    pub fn take(&self, limits: &Limits) -> Box<Kit> {
        let Some(mut kit) = self.kits.borrow_mut().pop() else {
            return Box::new(Kit {
                buf: Vec::with_capacity(Wire::CAPACITY),
                head: RequestHead::new(limits),
                scratch: Scratch::new(limits),
                addr: Vec::with_capacity(ADDR_TEXT_MAX),
            });
        };
        if kit.buf.capacity() < Wire::CAPACITY {
            // Its buffer went with a tunnel.
            kit.buf = Vec::with_capacity(Wire::CAPACITY);
        }
        kit
    }

    /// Takes `kit` back for the next connection, emptied of this one's state, unless
    /// [`SPARE_MAX`] are spare already.
    pub fn give_back(&self, mut kit: Box<Kit>) {
        let mut kits = self.kits.borrow_mut();
        if kits.len() >= SPARE_MAX {
            return;
        }
        kit.buf.clear();
        // Grown for a large head: the next connection gets one of the usual size.
        kit.buf.shrink_to(Wire::CAPACITY);
        kit.head.recycle();
        kit.scratch.recycle();
        kit.addr.clear();
        kits.push(kit);
    }
}

/// Writes `ip` as text into `out`: for IPv4 by hand, a fifth of the instructions of its
/// `Display` (which formats through `fmt::write` into a temporary buffer).
pub fn write_ip(ip: std::net::IpAddr, out: &mut Vec<u8>) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_text_is_display() {
        let mut out = Vec::new();
        let mut check = |ip: IpAddr| {
            out.clear();
            write_ip(ip, &mut out);
            assert_eq!(out, ip.to_string().as_bytes());
        };
        for octet in 0..=255u8 {
            check(IpAddr::V4(Ipv4Addr::new(octet, 0, 255 - octet, octet / 3)));
        }
        check(IpAddr::V6(Ipv6Addr::LOCALHOST));
        check(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 33).to_ipv6_mapped()));
        check(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0xff00, 0x42,
        )));
    }

    /// A kit that served an exchange comes back as a new one, but for its room.
    #[test]
    fn a_recycled_kit_is_a_fresh_one() {
        let limits = Limits::default();
        let fresh = Kit {
            buf: Vec::new(),
            head: RequestHead::new(&limits),
            scratch: Scratch::new(&limits),
            addr: Vec::new(),
        };
        let spares = Spares::default();
        let mut kit = spares.take(&limits);
        let request =
            b"POST /a?b HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n";
        kit.head.parse(request, &limits).unwrap();
        let response = b"HTTP/1.1 404 Gone\r\nTransfer-Encoding: chunked\r\nUpgrade: x\r\n\r\n";
        kit.scratch.response.parse(response, &limits).unwrap();
        kit.buf.extend_from_slice(request);
        // As a head near `max_head` grows it: the spare keeps the usual size only.
        kit.buf.reserve(64 * 1024);
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let never = std::pin::pin!(std::future::pending::<()>());
            let done = kit
                .scratch
                .upstream_wait
                .within(std::time::Instant::now(), never)
                .await;
            assert!(done.is_none());
        });
        assert!(kit.scratch.upstream_wait.has_timer());
        spares.give_back(kit);
        let kit = spares.take(&limits);
        assert!(kit.buf.is_empty() && kit.buf.capacity() == Wire::CAPACITY);
        assert_eq!(format!("{:?}", kit.head), format!("{:?}", fresh.head));
        assert_eq!(
            format!("{:?}", kit.scratch.response),
            format!("{:?}", fresh.scratch.response)
        );
        assert!(
            !kit.scratch.upstream_wait.has_timer(),
            "the last task's waker stayed"
        );
    }

    #[test]
    fn a_kit_comes_back_empty_and_the_spares_are_bounded() {
        let spares = Spares::default();
        let limits = Limits::default();
        let mut kit = spares.take(&limits);
        kit.buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        kit.scratch.out.extend_from_slice(b"x");
        // As a head near `max_head` leaves them.
        kit.buf.reserve(64 * 1024);
        kit.scratch.request.reserve(64 * 1024);
        kit.scratch.served.status = 200;
        kit.addr.extend_from_slice(b"127.0.0.1");
        spares.give_back(kit);
        let kit = spares.take(&limits);
        assert!(kit.buf.is_empty() && kit.buf.capacity() == Wire::CAPACITY);
        assert!(kit.scratch.out.is_empty() && kit.addr.is_empty());
        assert!(kit.scratch.request.capacity() <= 16 * 1024 + 32);
        assert_eq!(kit.scratch.served.status, 0);
        let kits: Vec<_> = (0..SPARE_MAX + 5).map(|_| spares.take(&limits)).collect();
        for kit in kits {
            spares.give_back(kit);
        }
        assert_eq!(spares.kits.borrow().len(), SPARE_MAX);
    }
}
