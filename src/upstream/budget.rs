//! The retry budget of one upstream on one worker: retries may add at most a configured
//! share of the requests seen over a sliding window (plus a small floor, so a quiet
//! upstream can still retry), so that a failing backend cannot multiply its own load.
//!
//! Sans-io: counts in one-second buckets over a ten-second window, `now` passed in.

use std::time::Instant;

/// Buckets of one second each: the window is this many seconds.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the budget's origin that this bucket counts.
    second: u64,
    requests: u32,
    retries: u32,
}

#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Retries allowed per 1000 requests.
    permille: u32,
    /// Retries always allowed per window.
    min: u32,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
}

impl RetryBudget {
    pub fn new(permille: u32, min: u32, now: Instant) -> RetryBudget {
        RetryBudget {
            permille,
            min,
            origin: now,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Takes a reloaded policy's numbers, keeping the counts.
    pub fn configure(&mut self, permille: u32, min: u32) {
        self.permille = permille;
        self.min = min;
    }

    /// The bucket for `now`, emptied if it last counted an older second.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let slot = &mut self.buckets[(second % BUCKETS as u64) as usize];
        if slot.second != second {
            *slot = Bucket {
                second,
                ..Bucket::default()
            };
        }
        slot
    }

    /// One request (not a retry) started.
    pub fn request(&mut self, now: Instant) {
        let b = self.bucket(now);
        b.requests = b.requests.saturating_add(1);
    }

    /// Whether one more retry fits the budget now; if it does, it is counted.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.bucket(now);
        let second = now.saturating_duration_since(self.origin).as_secs();
        let (requests, retries) = self
            .buckets
            .iter()
            .filter(|b| b.second + (BUCKETS as u64) > second)
            .fold((0u64, 0u64), |(q, r), b| {
                (q + u64::from(b.requests), r + u64::from(b.retries))
            });
        let allowed = (requests * u64::from(self.permille) / 1000).max(u64::from(self.min));
        if retries >= allowed {
            return false;
        }
        let b = self.bucket(now);
        b.retries = b.retries.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_stay_within_the_share_of_requests() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(200, 3, t0);
        let mut granted = 0;
        for _ in 0..1000 {
            b.request(t0);
            if b.try_retry(t0) {
                granted += 1;
            }
        }
        assert_eq!(granted, 200, "20% of 1000");
    }

    #[test]
    fn the_floor_allows_a_few_retries_without_traffic() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(200, 3, t0);
        b.request(t0);
        let granted = (0..10).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 3);
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(100, 0, t0);
        for _ in 0..100 {
            b.request(t0);
        }
        let granted = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 10);
        // Nine seconds on, the first second still counts; at ten it has left the window.
        let t9 = t0 + Duration::from_secs(9);
        assert!(!b.try_retry(t9));
        let t10 = t0 + Duration::from_secs(10);
        assert!(!b.try_retry(t10), "no requests in the window, no floor");
        for _ in 0..10 {
            b.request(t10);
        }
        assert!(b.try_retry(t10));
        assert!(!b.try_retry(t10));
    }

    #[test]
    fn reconfigured_numbers_apply_to_the_counts_so_far() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0, 0, t0);
        for _ in 0..10 {
            b.request(t0);
        }
        assert!(!b.try_retry(t0));
        b.configure(500, 0);
        assert_eq!((0..10).filter(|_| b.try_retry(t0)).count(), 5);
    }
}
