//! One worker's shard of a rate-limit policy: a token bucket per key, kept as GCRA's
//! "theoretical arrival time" (one integer per key), with a bound on the keys it remembers.
//!
//! Sans-io: the caller passes the key bytes and `now`. With N workers, a key that does not
//! follow the client's connection can reach every worker, so each enforces `rate/N` and
//! `burst/N` (the caller passes `share = N`); with `steer = "client_ip"`, client keys live on
//! one worker and get the full rate (`share = 1`), which makes them exact.
//!
//! Memory is bounded by `max_keys`: past it the least recently used key is forgotten (and
//! counted) — which at worst hands that client a fresh burst.

use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// Requests still allowed right now.
        remaining: u64,
        /// Seconds until the bucket is full again.
        reset: u64,
    },
    Deny {
        /// Seconds until one request will be allowed.
        retry_after: u64,
        reset: u64,
    },
}

struct Node {
    key: Box<[u8]>,
    /// Theoretical arrival time, in nanoseconds since `epoch`.
    tat: u64,
    prev: u32,
    next: u32,
}

pub struct Limiter {
    /// Nanoseconds between two tokens for this shard.
    interval: u64,
    /// How far ahead of now the arrival time may run: (burst - 1) intervals.
    tolerance: u64,
    burst: u64,
    max_keys: usize,
    epoch: Instant,
    index: ahash::AHashMap<Box<[u8]>, u32>,
    nodes: Vec<Node>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to forget.
    tail: u32,
    evictions: u64,
}

impl Limiter {
    /// `rate` tokens per `per`, `burst` at once, divided by `share` workers.
    pub fn new(rate: u64, per: Duration, burst: u64, max_keys: usize, share: u64) -> Limiter {
        let share = share.max(1);
        let interval = (per.as_nanos() as u64 / rate.max(1))
            .saturating_mul(share)
            .max(1);
        let burst = (burst / share).max(1);
        Limiter {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            burst,
            max_keys: max_keys.max(1),
            epoch: Instant::now(),
            index: ahash::AHashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            evictions: 0,
        }
    }

    /// The burst this shard allows (the `RateLimit-Limit` it reports).
    pub fn limit(&self) -> u64 {
        self.burst
    }

    pub fn keys(&self) -> usize {
        self.index.len()
    }

    /// Keys forgotten to stay within `max_keys`.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Takes a token for `key` at `now`, or says how long until one is there.
    pub fn check(&mut self, key: &[u8], now: Instant) -> Decision {
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let slot = match self.index.get(key) {
            Some(&slot) => {
                self.unlink(slot);
                slot
            }
            None => self.insert(key, now),
        };
        self.push_front(slot);
        let Some(node) = self.nodes.get_mut(slot as usize) else {
            return Decision::Deny {
                retry_after: 1,
                reset: 1,
            };
        };
        let tat = node.tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            let wait = ahead - self.tolerance;
            return Decision::Deny {
                retry_after: ceil_secs(wait),
                reset: ceil_secs(ahead),
            };
        }
        node.tat = tat + self.interval;
        let ahead = node.tat - now;
        let remaining = (self.tolerance + self.interval).saturating_sub(ahead) / self.interval;
        Decision::Allow {
            remaining,
            reset: ceil_secs(ahead),
        }
    }

    /// A slot for a new key: a fresh one, or the least recently used one's.
    fn insert(&mut self, key: &[u8], now: u64) -> u32 {
        let node = Node {
            key: key.into(),
            tat: now,
            prev: NIL,
            next: NIL,
        };
        let slot = if self.index.len() >= self.max_keys && self.tail != NIL {
            let slot = self.tail;
            self.unlink(slot);
            if let Some(old) = self.nodes.get_mut(slot as usize) {
                self.index.remove(&old.key);
                *old = node;
            }
            self.evictions += 1;
            slot
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.index.insert(key.into(), slot);
        slot
    }

    fn unlink(&mut self, slot: u32) {
        let Some(node) = self.nodes.get(slot as usize) else {
            return;
        };
        let (prev, next) = (node.prev, node.next);
        match self.nodes.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.nodes.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        if let Some(node) = self.nodes.get_mut(slot as usize) {
            node.prev = NIL;
            node.next = old_head;
        }
        match self.nodes.get_mut(old_head as usize) {
            Some(h) => h.prev = slot,
            None => self.tail = slot,
        }
        self.head = slot;
    }
}

fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn burst_then_rate() {
        let mut l = Limiter::new(10, Duration::from_secs(1), 5, 100, 1);
        let t0 = Instant::now();
        let burst = (0..20).filter(|_| allowed(l.check(b"k", t0))).count();
        assert_eq!(burst, 5);
        // 100 ms later exactly one more token has arrived.
        let t1 = t0 + Duration::from_millis(100);
        assert!(allowed(l.check(b"k", t1)));
        assert!(!allowed(l.check(b"k", t1)));
        // Another key has its own bucket.
        assert!(allowed(l.check(b"other", t1)));
    }

    #[test]
    fn headers_values() {
        let mut l = Limiter::new(1, Duration::from_secs(1), 3, 100, 1);
        let t0 = Instant::now();
        assert_eq!(
            l.check(b"k", t0),
            Decision::Allow {
                remaining: 2,
                reset: 1
            }
        );
        assert_eq!(
            l.check(b"k", t0),
            Decision::Allow {
                remaining: 1,
                reset: 2
            }
        );
        assert_eq!(
            l.check(b"k", t0),
            Decision::Allow {
                remaining: 0,
                reset: 3
            }
        );
        assert_eq!(
            l.check(b"k", t0),
            Decision::Deny {
                retry_after: 1,
                reset: 3
            }
        );
    }

    #[test]
    fn share_divides_rate_and_burst() {
        let mut l = Limiter::new(10, Duration::from_secs(1), 10, 100, 2);
        assert_eq!(l.limit(), 5);
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| allowed(l.check(b"k", t0))).count(), 5);
        assert!(!allowed(l.check(b"k", t0 + Duration::from_millis(150))));
        assert!(allowed(l.check(b"k", t0 + Duration::from_millis(200))));
    }

    #[test]
    fn a_flood_of_keys_stays_within_max_keys() {
        let mut l = Limiter::new(1, Duration::from_secs(1), 1, 1000, 1);
        let now = Instant::now();
        for i in 0..100_000u32 {
            assert!(allowed(l.check(format!("key-{i}").as_bytes(), now)));
            assert!(l.keys() <= 1000);
        }
        assert_eq!(l.keys(), 1000);
        assert_eq!(l.evictions(), 99_000);
        // The most recent keys are remembered, the oldest forgotten.
        assert!(!allowed(l.check(b"key-99999", now)));
        assert!(allowed(l.check(b"key-0", now)));
    }

    #[test]
    fn recently_used_keys_survive_eviction() {
        let mut l = Limiter::new(1, Duration::from_secs(60), 1, 3, 1);
        let now = Instant::now();
        for k in [b"a", b"b", b"c"] {
            l.check(k, now);
        }
        l.check(b"a", now); // a is now the most recent
        l.check(b"d", now); // forgets b, the least recent
        assert!(
            !allowed(l.check(b"a", now)),
            "a still remembered (and empty)"
        );
        assert!(
            allowed(l.check(b"b", now)),
            "b was forgotten: a fresh bucket"
        );
    }
}
