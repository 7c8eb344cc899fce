//! Address blocks and the allow/deny filter built from them: the first access decision a request
//! meets, made from the client's address alone.
//!
//! A [`CidrSet`] keeps its blocks as sorted, merged ranges of integers (IPv4 as `u32`, IPv6 as
//! `u128`), so a check is one binary search over at most as many ranges as blocks were written,
//! with no allocation. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 client) are checked as the IPv4 address they carry, so `10.0.0.0/8`
//! covers such a client too; and the part of an IPv6 block that lies in the mapped range also
//! applies to the IPv4 addresses it maps (`::/0` covers every client).
//!
//! The filter's rule ([`IpFilter::permits`]): a denied address is refused whatever else is
//! listed (deny wins); otherwise a non-empty allow list refuses every address not in it; an
//! empty allow list allows all.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error(
        "`{0}` is not an IP address (expected \"10.0.0.0/8\", \"2001:db8::/32\" or a bare address)"
    )]
    Address(String),
    #[error("`{text}`: prefix length must be a number from 0 to {max}")]
    Prefix { text: String, max: u8 },
    /// `10.1.2.3/8`: bits set past the prefix are almost always a typo for another block.
    #[error("`{text}` has bits set past its /{prefix} prefix (the block is {canonical})")]
    HostBits {
        text: String,
        prefix: u8,
        canonical: String,
    },
}

/// One address block, `ADDR/PREFIX`; a bare address is a block of one (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Block {
    /// Parses `"10.0.0.0/8"`, `"2001:db8::/32"`, `"192.0.2.7"` or `"::1"`. Bits set past the
    /// prefix are refused rather than silently cleared.
    pub fn parse(text: &str) -> Result<Block, BlockError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| BlockError::Address(text.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would also take "+8".
            Some(p) => Some(p)
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|&p| p <= max)
                .ok_or(BlockError::Prefix {
                    text: text.to_string(),
                    max,
                })?,
        };
        let block = Block { addr, prefix };
        let canonical = block.network();
        if canonical.addr != addr {
            return Err(BlockError::HostBits {
                text: text.to_string(),
                prefix,
                canonical: canonical.to_string(),
            });
        }
        Ok(block)
    }

    /// The block with the bits past its prefix cleared.
    fn network(self) -> Block {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let (start, _) = v4_range(u32::from(a), self.prefix);
                IpAddr::V4(Ipv4Addr::from(start))
            }
            IpAddr::V6(a) => {
                let (start, _) = v6_range(u128::from(a), self.prefix);
                IpAddr::V6(Ipv6Addr::from(start))
            }
        };
        Block {
            addr,
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// First and last address of an IPv4 block.
fn v4_range(addr: u32, prefix: u8) -> (u32, u32) {
    let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    (addr & !host, addr | host)
}

/// First and last address of an IPv6 block.
fn v6_range(addr: u128, prefix: u8) -> (u128, u128) {
    let host = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    (addr & !host, addr | host)
}

/// `::ffff:0.0.0.0` to `::ffff:255.255.255.255`: IPv4 clients as an IPv6 socket sees them.
const MAPPED_START: u128 = 0xffff_0000_0000;
const MAPPED_END: u128 = 0xffff_ffff_ffff;

/// The address a client is checked as: IPv4-mapped IPv6 becomes the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// A set of address blocks with a membership test that allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// The blocks as written, for display and `/config`.
    blocks: Vec<Block>,
    /// Sorted, non-overlapping, non-adjacent inclusive ranges.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    pub fn new(blocks: Vec<Block>) -> CidrSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for block in &blocks {
            match block.addr {
                IpAddr::V4(a) => v4.push(v4_range(u32::from(a), block.prefix)),
                IpAddr::V6(a) => {
                    let (start, end) = v6_range(u128::from(a), block.prefix);
                    // The mapped part applies to IPv4 clients, which are checked as IPv4.
                    let (lo, hi) = (start.max(MAPPED_START), end.min(MAPPED_END));
                    if lo <= hi {
                        // Both lie in the mapped range, whose low 32 bits are the IPv4 address.
                        v4.push(((lo & 0xffff_ffff) as u32, (hi & 0xffff_ffff) as u32));
                    }
                    v6.push((start, end));
                }
            }
        }
        CidrSet {
            blocks,
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge<T: Copy + Ord + Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.next().is_none_or(|after| start <= after) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn in_ranges<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The first range that ends at or after x is the only one that can hold it.
    let i = ranges.partition_point(|&(_, end)| end < x);
    ranges.get(i).is_some_and(|&(start, _)| start <= x)
}

/// The next integer, if any: adjacent ranges merge too.
trait Step: Sized {
    fn next(self) -> Option<Self>;
}

impl Step for u32 {
    fn next(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl Step for u128 {
    fn next(self) -> Option<u128> {
        self.checked_add(1)
    }
}

/// Who may reach the gateway or a route, by client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    pub allow: CidrSet,
    pub deny: CidrSet,
}

impl IpFilter {
    /// Deny wins; a non-empty allow list refuses everything it does not hold.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    /// Whether the filter lets every address through (nothing configured).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

impl Serialize for IpFilter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let list = |set: &CidrSet| -> Vec<String> {
            set.blocks().iter().map(ToString::to_string).collect()
        };
        let mut s = serializer.serialize_struct("IpFilter", 2)?;
        s.serialize_field("allow", &list(&self.allow))?;
        s.serialize_field("deny", &list(&self.deny))?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(blocks: &[&str]) -> CidrSet {
        CidrSet::new(
            blocks
                .iter()
                .map(|b| Block::parse(b).unwrap_or_else(|e| panic!("{b}: {e}")))
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_blocks_and_bare_addresses() {
        let b = Block::parse("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.addr, b.prefix), (ip("10.0.0.0"), 8));
        let b = Block::parse("192.0.2.7").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.prefix, 32);
        let b = Block::parse("2001:db8::1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.prefix, 128);
        assert_eq!(
            Block::parse("0.0.0.0/0").map(|b| b.to_string()),
            Ok("0.0.0.0/0".to_string())
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "host/8",
            "10.0.0/8",
            "10.0.0.0/8/9",
        ] {
            assert!(Block::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            Block::parse("10.1.2.3/8"),
            Err(BlockError::HostBits { canonical, .. }) if canonical == "10.0.0.0/8"
        ));
        assert!(matches!(
            Block::parse("2001:db8::1/32"),
            Err(BlockError::HostBits { .. })
        ));
    }

    #[test]
    fn v4_boundaries() {
        let s = set(&["10.0.0.0/8", "192.168.1.128/25", "203.0.113.9"]);
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.128",
            "192.168.1.255",
            "203.0.113.9",
        ] {
            assert!(s.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.127",
            "192.168.2.0",
            "203.0.113.8",
            "203.0.113.10",
        ] {
            assert!(!s.contains(ip(outside)), "{outside}");
        }
        let all = set(&["0.0.0.0/0"]);
        assert!(all.contains(ip("0.0.0.0")) && all.contains(ip("255.255.255.255")));
        assert!(
            !all.contains(ip("::1")),
            "an IPv4 block holds no IPv6 address"
        );
        let top = set(&["255.255.255.255/32"]);
        assert!(top.contains(ip("255.255.255.255")) && !top.contains(ip("255.255.255.254")));
    }

    #[test]
    fn v6_boundaries() {
        let s = set(&["2001:db8::/32", "fe80::1"]);
        assert!(s.contains(ip("2001:db8::")));
        assert!(s.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("2001:db9::")));
        assert!(!s.contains(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(s.contains(ip("fe80::1")) && !s.contains(ip("fe80::2")));
        assert!(
            !s.contains(ip("10.0.0.1")),
            "an IPv6 block holds no plain IPv4 address"
        );
        let all = set(&["::/0"]);
        assert!(all.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(
            all.contains(ip("10.0.0.1")),
            "::/0 holds the mapped range, so all of IPv4"
        );
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.1.2.3")));
        // A block written in mapped form applies to IPv4 clients.
        let mapped = set(&["::ffff:192.0.2.0/120"]);
        assert!(mapped.contains(ip("192.0.2.200")));
        assert!(mapped.contains(ip("::ffff:192.0.2.1")));
        assert!(!mapped.contains(ip("192.0.3.0")));
        // IPv4-compatible (::a.b.c.d, deprecated) is not mapped: it stays IPv6.
        assert!(!s.contains(ip("::10.1.2.3")));
    }

    #[test]
    fn overlapping_and_adjacent_blocks_merge() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(
            s.v4,
            vec![(0x0a00_0000, 0x0a00_01ff), (0x0a00_0300, 0x0a00_03ff)]
        );
        assert!(s.contains(ip("10.0.1.255")));
        assert!(!s.contains(ip("10.0.2.0")));
        assert!(s.contains(ip("10.0.3.0")));
    }

    #[test]
    fn filter_rule() {
        let open = IpFilter::default();
        assert!(open.is_open() && open.permits(ip("198.51.100.1")));

        let deny_only = IpFilter {
            allow: CidrSet::default(),
            deny: set(&["198.51.100.0/24"]),
        };
        assert!(!deny_only.permits(ip("198.51.100.1")));
        assert!(!deny_only.permits(ip("::ffff:198.51.100.1")));
        assert!(deny_only.permits(ip("198.51.101.1")));

        let both = IpFilter {
            allow: set(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: set(&["10.9.0.0/16"]),
        };
        assert!(both.permits(ip("10.1.0.1")));
        assert!(both.permits(ip("2001:db8::5")));
        assert!(!both.permits(ip("10.9.0.1")), "deny wins over allow");
        assert!(
            !both.permits(ip("192.0.2.1")),
            "not in a non-empty allow list"
        );
        assert!(!both.permits(ip("::1")));
    }

    #[test]
    fn serializes_blocks_as_written() {
        let f = IpFilter {
            allow: set(&["10.0.0.0/8", "::1"]),
            deny: CidrSet::default(),
        };
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert_eq!(json, r#"{"allow":["10.0.0.0/8","::1/128"],"deny":[]}"#);
    }
}
