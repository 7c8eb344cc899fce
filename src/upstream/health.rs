//! Target health, passive and active, as sans-io state machines.
//!
//! - [`Outlier`]: passive health (outlier detection), one per target per worker. Consecutive
//!   failures of real requests eject a target for a backoff that doubles on each repeat
//!   ejection, up to a cap; [`may_eject`] keeps an upstream from losing more than its
//!   `max_ejected_percent` of targets that way.
//! - [`ActiveState`]: the thresholds of active checks (`healthy` passes bring a target back,
//!   `unhealthy` failures take it out), kept by the control plane's checker, once per target
//!   for the whole process.
//! - [`TargetHealth`]: the one shared word between that checker and the workers. Only the
//!   checker writes it; a worker reads it with one relaxed load per candidate on a pick.
//!
//! Nothing here does I/O or reads the clock: callers pass `now`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::OutlierDetection;

/// The active-check verdict on one target, shared by the checker thread and every worker.
/// A target starts healthy: until a check says otherwise it gets traffic (and passive
/// detection guards it meanwhile).
#[derive(Debug)]
pub struct TargetHealth {
    healthy: AtomicBool,
}

impl Default for TargetHealth {
    fn default() -> TargetHealth {
        TargetHealth {
            healthy: AtomicBool::new(true),
        }
    }
}

impl TargetHealth {
    /// Relaxed: the verdict is advisory, and a worker that sees it one pick late costs one
    /// request at most, which retries and outlier detection cover.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// Consecutive results of active checks on one target, and the verdict they add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveState {
    healthy: bool,
    /// Passes in a row (while unhealthy) or failures in a row (while healthy).
    streak: u32,
}

impl ActiveState {
    pub fn new(healthy: bool) -> ActiveState {
        ActiveState { healthy, streak: 0 }
    }

    pub fn is_healthy(self) -> bool {
        self.healthy
    }

    /// Records one check; returns the new verdict when this check changed it.
    pub fn record(&mut self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { unhealthy } else { healthy };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

/// The status code of an HTTP/1.x status line at the start of `response`, if it holds one.
pub fn status_of(response: &[u8]) -> Option<u16> {
    let rest = response
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| response.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit)
        || rest.get(3).is_some_and(|&b| b != b' ' && b != b'\r')
    {
        return None;
    }
    digits
        .iter()
        .try_fold(0u16, |n, &d| Some(n * 10 + u16::from(d - b'0')))
}

/// Passive health of one target on one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row since the last success or ejection.
    failures: u32,
    /// Ejected until then (a past instant: readmitted at that time).
    ejected_until: Option<Instant>,
    /// Ejections in a row without a healthy spell between them: the backoff's exponent.
    ejections: u32,
}

impl Outlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// A request to the target succeeded. Once it has stayed healthy for a base ejection
    /// time since it came back, its next ejection starts from the base again.
    pub fn success(&mut self, now: Instant, cfg: &OutlierDetection) {
        self.failures = 0;
        if let Some(until) = self.ejected_until {
            if now >= until + cfg.base_ejection {
                self.ejections = 0;
            }
        }
    }

    /// A request to the target failed (connect failure, reset, timeout or 5xx). Returns how
    /// long the target is ejected for when this failure ejects it; `allowed` says whether the
    /// upstream may lose another target (see [`may_eject`]). An ejected target's stragglers
    /// (requests sent before the ejection) do not count.
    pub fn failure(
        &mut self,
        now: Instant,
        cfg: &OutlierDetection,
        allowed: bool,
    ) -> Option<Duration> {
        if self.is_ejected(now) {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures < cfg.consecutive_failures || !allowed {
            return None;
        }
        // base × 2^repeats, capped: checked arithmetic keeps a long run of repeats bounded.
        let factor = 1u32.checked_shl(self.ejections).unwrap_or(u32::MAX);
        let length = cfg
            .base_ejection
            .checked_mul(factor)
            .map_or(cfg.max_ejection, |d| d.min(cfg.max_ejection));
        self.failures = 0;
        self.ejections = self.ejections.saturating_add(1);
        self.ejected_until = Some(now + length);
        Some(length)
    }
}

/// Whether an upstream with `total` targets, `ejected` of them ejected now, may eject one
/// more without exceeding `max_percent` of its targets.
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    (ejected + 1) * 100 <= total * max_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert_eq!(o.failure(t0, &cfg, true), None);
        assert_eq!(o.failure(t0, &cfg, true), None);
        o.success(t0, &cfg);
        assert_eq!(o.failure(t0, &cfg, true), None);
        assert_eq!(o.failure(t0, &cfg, true), None);
        assert_eq!(o.failure(t0, &cfg, true), Some(Duration::from_secs(10)));
        assert!(o.is_ejected(t0 + Duration::from_secs(9)));
        assert!(!o.is_ejected(t0 + Duration::from_secs(10)));
        // Late failures of requests sent before the ejection change nothing.
        assert_eq!(o.failure(t0 + Duration::from_secs(1), &cfg, true), None);
    }

    #[test]
    fn repeat_ejections_back_off_up_to_the_cap() {
        let cfg = cfg();
        let mut now = Instant::now();
        let mut o = Outlier::default();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let mut ejected = None;
            while ejected.is_none() {
                ejected = o.failure(now, &cfg, true);
            }
            let length = ejected.unwrap_or_default();
            lengths.push(length.as_secs());
            // Readmitted, and failing again at once.
            now += length;
        }
        assert_eq!(lengths, [10, 20, 35, 35]);
        // A healthy spell of one base ejection after readmission resets the backoff.
        o.success(now + Duration::from_secs(10), &cfg);
        now += Duration::from_secs(10);
        let mut ejected = None;
        while ejected.is_none() {
            ejected = o.failure(now, &cfg, true);
        }
        assert_eq!(ejected, Some(Duration::from_secs(10)));
    }

    #[test]
    fn not_allowed_means_not_ejected() {
        let cfg = cfg();
        let now = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.failure(now, &cfg, false), None);
        }
        assert!(!o.is_ejected(now));
        // Allowed again: the failures kept counting, so the next one ejects.
        assert!(o.failure(now, &cfg, true).is_some());
    }

    #[test]
    fn max_ejected_percent_bounds_the_ejected_share() {
        assert!(may_eject(0, 3, 50));
        assert!(!may_eject(1, 3, 50));
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        assert!(!may_eject(0, 1, 50), "never the only target at 50%");
        assert!(may_eject(0, 1, 100));
        assert!(!may_eject(0, 10, 0));
    }

    #[test]
    fn active_thresholds() {
        let mut s = ActiveState::new(true);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(
            s.record(true, 2, 3),
            None,
            "a pass breaks the failure streak"
        );
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(false));
        assert!(!s.is_healthy());
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(true));
        assert!(s.is_healthy());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
        assert_eq!(status_of(b"HTTP/1.1 2000 x"), None);
        assert_eq!(status_of(b"HTTP/2 200"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn shared_verdict() {
        let h = TargetHealth::default();
        assert!(h.is_healthy());
        h.set(false);
        assert!(!h.is_healthy());
    }
}
