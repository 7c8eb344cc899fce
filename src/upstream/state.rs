//! What one upstream is, beyond its config, while the gateway runs.
//!
//! - [`Shared`]: the read-mostly part, one per upstream in each routing snapshot: the Maglev
//!   table of a consistent-hash upstream and the active-health word of each checked target.
//!   Built by the control plane when a snapshot is published, carried over for targets that
//!   stay (by upstream name and address), so a reload keeps their health.
//! - [`UpstreamState`]: one worker's own state: its balancer, per-target load and passive
//!   health ([`TargetLive`]), the circuit breaker's counts and the retry budget. `!Send`
//!   (`Cell`, `Rc`), never touched by another thread. Rebuilt when the worker first sees a new
//!   snapshot, keeping what belongs to upstreams and targets that stay, so requests in flight
//!   across a reload release what they hold in the same counters.
//!
//! An upstream that configures none of balancing beyond round robin, health, outlier
//! detection, breaker or retries costs a pick one branch more than the bare cursor: every
//! other piece is behind an `Option` or a flag.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::balance::{Balancer, Candidates, Maglev};
use super::budget::RetryBudget;
use super::health::{may_eject, Outlier, TargetHealth};
use crate::config::{Balance, Breaker, Config, OutlierDetection, Upstream, UpstreamKind};

/// The shared, immutable-once-published part of one upstream (see the module docs).
#[derive(Debug, Default)]
pub struct Shared {
    /// One per target when the upstream has `health`; empty otherwise.
    pub health: Vec<Arc<TargetHealth>>,
    /// The lookup table of a `consistent_hash` upstream.
    pub ring: Option<Arc<Maglev>>,
}

impl Shared {
    /// One per upstream of `config`, reusing `previous`'s health words and tables where the
    /// upstream (by name) and target (by address) stay.
    pub fn build(config: &Config, previous: Option<(&Config, &[Shared])>) -> Vec<Shared> {
        config
            .upstreams
            .iter()
            .map(|up| {
                let old = previous.and_then(|(cfg, shared)| {
                    let i = cfg.upstreams.iter().position(|u| u.name == up.name)?;
                    Some((cfg.upstreams.get(i)?, shared.get(i)?))
                });
                let UpstreamKind::Targets(targets) = &up.kind else {
                    return Shared::default();
                };
                let health = match &up.health {
                    None => Vec::new(),
                    Some(_) => targets
                        .iter()
                        .map(|addr| {
                            old.and_then(|(cfg, shared)| match &cfg.kind {
                                UpstreamKind::Targets(old_targets) => {
                                    let j = old_targets.iter().position(|a| a == addr)?;
                                    shared.health.get(j).cloned()
                                }
                                UpstreamKind::Builtin(_) => None,
                            })
                            .unwrap_or_default()
                        })
                        .collect(),
                };
                let ring = match &up.balance {
                    Balance::ConsistentHash(_) => {
                        let same = old.and_then(|(cfg, shared)| {
                            (cfg.kind == up.kind).then(|| shared.ring.clone())?
                        });
                        Some(same.unwrap_or_else(|| {
                            let names: Vec<String> =
                                targets.iter().map(ToString::to_string).collect();
                            Arc::new(Maglev::new(&names))
                        }))
                    }
                    _ => None,
                };
                Shared { health, ring }
            })
            .collect()
    }
}

/// One target's state on one worker.
#[derive(Debug, Default)]
pub struct TargetLive {
    in_flight: Cell<u32>,
    /// Moving average of the time to a response head, in microseconds (0: none yet).
    latency_us: Cell<f64>,
    outlier: Cell<Outlier>,
    /// Times this worker ejected the target.
    ejections: Cell<u64>,
}

/// One target of an upstream as a worker sees it.
pub struct Target {
    pub addr: SocketAddr,
    live: Rc<TargetLive>,
    health: Option<Arc<TargetHealth>>,
}

/// An upstream's counts that outlive a reload: the breaker's, the budget, the metrics.
#[derive(Debug)]
struct Counters {
    /// Requests in flight (the breaker's `max_requests`).
    requests: Cell<u32>,
    /// Connections carrying a request (the breaker's `max_connections`).
    connections: Cell<u32>,
    /// Requests waiting for one of those connections.
    pending: Cell<u32>,
    /// Wakers of the pending requests; woken when a connection is released.
    waiters: RefCell<Vec<Waker>>,
    budget: RefCell<Option<RetryBudget>>,
    retries: Cell<u64>,
    budget_exhausted: Cell<u64>,
    /// Breaker rejections by [`Limit`].
    rejected: [Cell<u64>; 3],
}

impl Counters {
    fn new() -> Counters {
        Counters {
            requests: Cell::new(0),
            connections: Cell::new(0),
            pending: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            budget: RefCell::new(None),
            retries: Cell::new(0),
            budget_exhausted: Cell::new(0),
            rejected: Default::default(),
        }
    }
}

/// Which breaker limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxRequests,
    MaxPending,
    /// Waited for a connection (within `max_pending`) until the request's deadline.
    MaxConnections,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::MaxRequests => "max_requests",
            Limit::MaxPending => "max_pending",
            Limit::MaxConnections => "max_connections",
        }
    }

    fn index(self) -> usize {
        match self {
            Limit::MaxRequests => 0,
            Limit::MaxPending => 1,
            Limit::MaxConnections => 2,
        }
    }
}

/// How an attempt on a target ended, for passive health and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A response below 500 arrived after this long (to its head).
    Success(Duration),
    /// Connect failure, reset, timeout or a 5xx.
    Failure,
}

/// Targets already tried by one request, as bits (target index mod 64: beyond 64 targets an
/// index may alias another, which only makes a retry's choice a little narrower).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, i: usize) {
        self.0 |= 1 << (i % 64);
    }

    fn contains(self, i: usize) -> bool {
        self.0 & (1 << (i % 64)) != 0
    }
}

/// One worker's state of one upstream.
pub struct UpstreamState {
    pub name: String,
    targets: Vec<Target>,
    balancer: RefCell<Balancer>,
    /// Whether a pick must ask more than the balancer: health checks or outlier detection.
    filtered: bool,
    /// Whether targets' in-flight counts and latencies are kept (least_conn, p2c_ewma).
    tracks_load: bool,
    outlier: Option<OutlierDetection>,
    breaker: Option<Breaker>,
    counters: Rc<Counters>,
}

/// Picks' view of an upstream's targets: which ones are eligible.
struct View<'a> {
    targets: &'a [Target],
    now: Instant,
    /// Skip targets active checks call unhealthy and outlier detection ejected.
    healthy_only: bool,
    tried: Tried,
}

impl Candidates for View<'_> {
    fn targets(&self) -> usize {
        self.targets.len()
    }

    fn available(&self, i: usize) -> bool {
        let Some(t) = self.targets.get(i) else {
            return false;
        };
        if self.tried.contains(i) {
            return false;
        }
        !self.healthy_only
            || (t.health.as_ref().is_none_or(|h| h.is_healthy())
                && !t.live.outlier.get().is_ejected(self.now))
    }

    fn in_flight(&self, i: usize) -> u32 {
        self.targets.get(i).map_or(0, |t| t.live.in_flight.get())
    }

    fn latency_us(&self, i: usize) -> f64 {
        self.targets.get(i).map_or(0.0, |t| t.live.latency_us.get())
    }
}

/// Weight of a new latency sample in the moving average.
const EWMA_WEIGHT: f64 = 0.3;

/// The latency a failed attempt counts as: bad enough that p2c_ewma avoids the target until
/// good samples pull its average down again.
const FAILURE_PENALTY_US: f64 = 1_000_000.0;

impl UpstreamState {
    /// One worker's state for every upstream of `config` (with the snapshot's `shared`
    /// parts), carrying over from `old` what belongs to upstreams and targets that stay.
    /// `seed` varies the random choices of p2c_ewma between workers.
    pub fn build_all(
        config: &Config,
        shared: &[Shared],
        old: &[Rc<UpstreamState>],
        seed: u64,
        now: Instant,
    ) -> Vec<Rc<UpstreamState>> {
        config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, up)| {
                let before = old.iter().find(|s| s.name == up.name);
                let shared = shared.get(i);
                Rc::new(UpstreamState::build(
                    up,
                    shared,
                    before.map(|b| &**b),
                    seed ^ i as u64,
                    now,
                ))
            })
            .collect()
    }

    fn build(
        up: &Upstream,
        shared: Option<&Shared>,
        before: Option<&UpstreamState>,
        seed: u64,
        now: Instant,
    ) -> UpstreamState {
        let addrs: &[SocketAddr] = match &up.kind {
            UpstreamKind::Targets(addrs) => addrs,
            UpstreamKind::Builtin(_) => &[],
        };
        let targets: Vec<Target> = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| Target {
                addr,
                live: before
                    .and_then(|b| b.targets.iter().find(|t| t.addr == addr))
                    .map_or_else(Rc::default, |t| Rc::clone(&t.live)),
                health: shared.and_then(|s| s.health.get(i)).cloned(),
            })
            .collect();
        let balancer = match &up.balance {
            Balance::RoundRobin => Balancer::round_robin(),
            Balance::Weighted => Balancer::weighted(&up.weights),
            Balance::LeastConn => Balancer::least_conn(),
            Balance::P2cEwma => Balancer::p2c_ewma(seed),
            Balance::ConsistentHash(_) => match shared.and_then(|s| s.ring.clone()) {
                Some(ring) => Balancer::consistent_hash(ring),
                // A snapshot always has the table; round robin keeps a gap harmless.
                None => Balancer::round_robin(),
            },
        };
        let counters = before.map_or_else(|| Rc::new(Counters::new()), |b| Rc::clone(&b.counters));
        {
            let mut budget = counters.budget.borrow_mut();
            match (&up.retries, budget.as_mut()) {
                (None, _) => *budget = None,
                (Some(r), Some(b)) => b.configure(r.budget_permille, r.min_retries),
                (Some(r), None) => {
                    *budget = Some(RetryBudget::new(r.budget_permille, r.min_retries, now))
                }
            }
        }
        UpstreamState {
            name: up.name.clone(),
            filtered: up.health.is_some() || up.outlier.is_some(),
            tracks_load: matches!(up.balance, Balance::LeastConn | Balance::P2cEwma),
            targets,
            balancer: RefCell::new(balancer),
            outlier: up.outlier,
            breaker: up.breaker,
            counters,
        }
    }

    pub fn target(&self, i: usize) -> Option<&Target> {
        self.targets.get(i)
    }

    /// The target for the next attempt: a healthy one not tried yet by this request; else a
    /// healthy one tried already; else any not tried; else any (when checks call every
    /// target unhealthy, sending to them beats refusing everything: the fail-open of
    /// Envoy's panic threshold). `None` only for an upstream without targets.
    pub fn pick(&self, key: u64, tried: Tried, now: Instant) -> Option<usize> {
        let mut balancer = self.balancer.borrow_mut();
        let view = |healthy_only, tried| View {
            targets: &self.targets,
            now,
            healthy_only,
            tried,
        };
        if !self.filtered && tried == Tried::default() {
            return balancer.pick(&view(false, tried), key);
        }
        balancer
            .pick(&view(self.filtered, tried), key)
            .or_else(|| balancer.pick(&view(true, Tried::default()), key))
            .or_else(|| balancer.pick(&view(false, tried), key))
            .or_else(|| balancer.pick(&view(false, Tried::default()), key))
    }

    /// Whether the breaker limits connections (then [`UpstreamState::connection`] is asked).
    pub fn limits_connections(&self) -> bool {
        self.breaker.is_some_and(|b| b.max_connections.is_some())
    }

    /// Counts an attempt on target `i` as in flight (for least_conn and p2c_ewma) until the
    /// guard drops.
    pub fn begin(&self, i: usize) -> Option<InFlight<'_>> {
        if !self.tracks_load {
            return None;
        }
        let live = &self.targets.get(i)?.live;
        live.in_flight.set(live.in_flight.get() + 1);
        Some(InFlight(live))
    }

    /// Whether outcomes matter to this upstream (passive health or latency tracking).
    pub fn records_outcomes(&self) -> bool {
        self.outlier.is_some() || self.tracks_load
    }

    /// Records how an attempt on target `i` ended; returns the ejection's length when this
    /// outcome ejected the target (logged by the caller).
    pub fn record(&self, i: usize, outcome: Attempt, now: Instant) -> Option<Duration> {
        let live = &self.targets.get(i)?.live;
        if self.tracks_load {
            let sample = match outcome {
                Attempt::Success(took) => took.as_micros() as f64,
                Attempt::Failure => FAILURE_PENALTY_US,
            };
            let old = live.latency_us.get();
            let new = if old == 0.0 {
                sample
            } else {
                old + EWMA_WEIGHT * (sample - old)
            };
            live.latency_us.set(new.max(1.0));
        }
        let cfg = self.outlier.as_ref()?;
        let mut o = live.outlier.get();
        let ejected = match outcome {
            Attempt::Success(_) => {
                o.success(now, cfg);
                None
            }
            Attempt::Failure => {
                let ejected_now = self
                    .targets
                    .iter()
                    .filter(|t| t.live.outlier.get().is_ejected(now))
                    .count();
                let allowed = may_eject(ejected_now, self.targets.len(), cfg.max_ejected_percent);
                o.failure(now, cfg, allowed)
            }
        };
        live.outlier.set(o);
        if ejected.is_some() {
            live.ejections.set(live.ejections.get() + 1);
        }
        ejected
    }

    /// Admits a request under the breaker's `max_requests`; the slot is held until the guard
    /// drops. `Ok(None)`: no such limit.
    pub fn admit(&self) -> Result<Option<Slot<'_>>, Limit> {
        let Some(max) = self.breaker.and_then(|b| b.max_requests) else {
            return Ok(None);
        };
        let c = &self.counters;
        if c.requests.get() >= max {
            return Err(self.refuse(Limit::MaxRequests));
        }
        c.requests.set(c.requests.get() + 1);
        Ok(Some(Slot {
            counters: c,
            kind: SlotKind::Request,
        }))
    }

    /// A connection slot under the breaker's `max_connections`: at once if one is free,
    /// else after waiting (as one of at most `max_pending`) for one to be released; the
    /// caller bounds the wait. `Ok(None)`: no such limit.
    pub async fn connection(&self) -> Result<Option<Slot<'_>>, Limit> {
        let Some((max, max_pending)) = self
            .breaker
            .and_then(|b| Some((b.max_connections?, b.max_pending)))
        else {
            return Ok(None);
        };
        let c = &self.counters;
        if c.connections.get() >= max {
            if c.pending.get() >= max_pending {
                return Err(self.refuse(Limit::MaxPending));
            }
            let _waiting = Waiting::new(c);
            poll_fn(|cx| {
                if c.connections.get() < max {
                    Poll::Ready(())
                } else {
                    c.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
        c.connections.set(c.connections.get() + 1);
        Ok(Some(Slot {
            counters: c,
            kind: SlotKind::Connection,
        }))
    }

    /// Counts a breaker rejection (a pending wait that ran out calls this too).
    pub fn refuse(&self, limit: Limit) -> Limit {
        if let Some(cell) = self.counters.rejected.get(limit.index()) {
            cell.set(cell.get() + 1);
        }
        limit
    }

    /// One request (not a retry) for the retry budget.
    pub fn count_request(&self, now: Instant) {
        if let Some(b) = self.counters.budget.borrow_mut().as_mut() {
            b.request(now);
        }
    }

    /// Whether the budget allows one more retry now; counts it (or its refusal).
    pub fn try_retry(&self, now: Instant) -> bool {
        let c = &self.counters;
        let granted = c
            .budget
            .borrow_mut()
            .as_mut()
            .is_some_and(|b| b.try_retry(now));
        let counter = if granted {
            &c.retries
        } else {
            &c.budget_exhausted
        };
        counter.set(counter.get() + 1);
        granted
    }

    /// This worker's figures for the upstream as `name{labels} value` lines (see
    /// `metrics`): only those of the features it configures.
    pub fn export(&self, out: &mut String) {
        let c = &self.counters;
        let up = label_value(&self.name);
        if c.budget.borrow().is_some() {
            let _ = writeln!(
                out,
                "ringgate_retries_total{{upstream=\"{up}\"}} {}",
                c.retries.get()
            );
            let _ = writeln!(
                out,
                "ringgate_retry_budget_exhausted_total{{upstream=\"{up}\"}} {}",
                c.budget_exhausted.get()
            );
        }
        if self.breaker.is_some() {
            for limit in [Limit::MaxRequests, Limit::MaxPending, Limit::MaxConnections] {
                let n = c.rejected.get(limit.index()).map_or(0, Cell::get);
                let _ = writeln!(
                    out,
                    "ringgate_breaker_rejections_total{{upstream=\"{up}\",limit=\"{}\"}} {n}",
                    limit.label()
                );
            }
            let _ = writeln!(
                out,
                "ringgate_upstream_requests_in_flight{{upstream=\"{up}\"}} {}",
                c.requests.get()
            );
        }
        if self.outlier.is_some() {
            let now = Instant::now();
            for (i, t) in self.targets.iter().enumerate() {
                // A target listed twice is one series.
                if self
                    .targets
                    .get(..i)
                    .is_some_and(|before| before.iter().any(|b| b.addr == t.addr))
                {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "ringgate_upstream_ejections_total{{upstream=\"{up}\",target=\"{}\"}} {}",
                    t.addr,
                    t.live.ejections.get()
                );
                let _ = writeln!(
                    out,
                    "ringgate_upstream_ejected{{upstream=\"{up}\",target=\"{}\"}} {}",
                    t.addr,
                    u8::from(t.live.outlier.get().is_ejected(now))
                );
            }
        }
    }
}

/// A label value in Prometheus text format: `\`, `"` and newlines escaped.
pub fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An attempt in flight on a target; see [`UpstreamState::begin`].
pub struct InFlight<'a>(&'a TargetLive);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .set(self.0.in_flight.get().saturating_sub(1));
    }
}

enum SlotKind {
    Request,
    Connection,
}

/// A request or connection slot of the breaker, released on drop.
pub struct Slot<'a> {
    counters: &'a Counters,
    kind: SlotKind,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let c = self.counters;
        match self.kind {
            SlotKind::Request => c.requests.set(c.requests.get().saturating_sub(1)),
            SlotKind::Connection => {
                c.connections.set(c.connections.get().saturating_sub(1));
                // Every waiter looks again: one may have given up, and a wake-up is cheap
                // next to a request that never gets the free connection.
                for waker in c.waiters.borrow_mut().drain(..) {
                    waker.wake();
                }
            }
        }
    }
}

/// A request waiting for a connection slot, counted in `pending` until it gets one or
/// gives up.
struct Waiting<'a>(&'a Counters);

impl<'a> Waiting<'a> {
    fn new(c: &'a Counters) -> Waiting<'a> {
        c.pending.set(c.pending.get() + 1);
        Waiting(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.set(self.0.pending.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::future::Future;

    fn config(upstream: &str) -> Config {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n[upstreams.api]\n{upstream}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
        );
        match config::parse(&text, "t.toml") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn state(config: &Config) -> Rc<UpstreamState> {
        let shared = Shared::build(config, None);
        UpstreamState::build_all(config, &shared, &[], 1, Instant::now())
            .pop()
            .unwrap()
    }

    const THREE: &str = "targets = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]";

    #[test]
    fn plain_round_robin_needs_nothing_else() {
        let s = state(&config(THREE));
        let now = Instant::now();
        let picks: Vec<usize> = (0..4)
            .map(|_| s.pick(0, Tried::default(), now).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        assert!(s.begin(0).is_none(), "no load tracking");
        assert!(!s.records_outcomes());
        assert!(matches!(s.admit(), Ok(None)));
    }

    #[test]
    fn retries_avoid_tried_targets_until_none_is_left() {
        let s = state(&config(THREE));
        let now = Instant::now();
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(1);
        for _ in 0..3 {
            assert_eq!(s.pick(0, tried, now), Some(2));
        }
        tried.add(2);
        assert!(s.pick(0, tried, now).is_some(), "all tried: any");
    }

    #[test]
    fn unhealthy_and_ejected_targets_are_skipped_and_all_down_fails_open() {
        let c = config(&format!(
            "{THREE}\nhealth = {{ interval = \"1s\" }}\noutlier = {{ consecutive_failures = 2, max_ejected_percent = 100 }}"
        ));
        let shared = Shared::build(&c, None);
        let s = UpstreamState::build_all(&c, &shared, &[], 1, Instant::now())
            .pop()
            .unwrap();
        let now = Instant::now();
        shared[0].health[1].set(false);
        assert_eq!(s.record(2, Attempt::Failure, now), None);
        assert!(s.record(2, Attempt::Failure, now).is_some(), "ejected");
        for _ in 0..4 {
            assert_eq!(s.pick(0, Tried::default(), now), Some(0));
        }
        assert!(s.record(0, Attempt::Failure, now).is_none());
        assert!(s.record(0, Attempt::Failure, now).is_some());
        // Nothing healthy left: every target is a candidate again.
        let picks: Vec<usize> = (0..3)
            .map(|_| s.pick(0, Tried::default(), now).unwrap())
            .collect();
        let mut sorted = picks.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "{picks:?}");
        let mut out = String::new();
        s.export(&mut out);
        assert!(
            out.contains(
                "ringgate_upstream_ejections_total{upstream=\"api\",target=\"127.0.0.1:3\"} 1"
            ),
            "{out}"
        );
        assert!(
            out.contains("ringgate_upstream_ejected{upstream=\"api\",target=\"127.0.0.1:1\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn max_ejected_percent_keeps_targets_in() {
        let s = state(&config(&format!(
            "{THREE}\noutlier = {{ consecutive_failures = 1, max_ejected_percent = 50 }}"
        )));
        let now = Instant::now();
        assert!(s.record(0, Attempt::Failure, now).is_some());
        assert!(
            s.record(1, Attempt::Failure, now).is_none(),
            "a second of three is over 50%"
        );
    }

    #[test]
    fn reload_keeps_state_of_targets_that_stay() {
        let c1 = config(&format!("{THREE}\nbalance = \"least_conn\"\nhealth = {{}}"));
        let shared1 = Shared::build(&c1, None);
        let s1 = UpstreamState::build_all(&c1, &shared1, &[], 1, Instant::now());
        let held = s1[0].begin(1);
        shared1[0].health[1].set(false);
        let c2 = config(
            "targets = [\"127.0.0.1:2\", \"127.0.0.1:9\"]\nbalance = \"least_conn\"\nhealth = {}",
        );
        let shared2 = Shared::build(&c2, Some((&c1, &shared1)));
        assert!(Arc::ptr_eq(&shared1[0].health[1], &shared2[0].health[0]));
        assert!(
            !shared2[0].health[0].is_healthy(),
            "health survives the reload"
        );
        assert!(
            shared2[0].health[1].is_healthy(),
            "a new target starts healthy"
        );
        let s2 = UpstreamState::build_all(&c2, &shared2, &s1, 1, Instant::now());
        assert_eq!(s2[0].targets[0].live.in_flight.get(), 1);
        drop(held);
        assert_eq!(
            s2[0].targets[0].live.in_flight.get(),
            0,
            "released into the same count"
        );
    }

    #[test]
    fn breaker_limits_requests_and_connections() {
        let s = state(&config(&format!(
            "{THREE}\nbreaker = {{ max_requests = 2, max_connections = 1, max_pending = 0 }}"
        )));
        let a = s.admit().unwrap();
        let b = s.admit().unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(s.admit().err(), Some(Limit::MaxRequests));
        drop(a);
        assert!(s.admit().is_ok());
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut first = std::pin::pin!(s.connection());
        let Poll::Ready(Ok(Some(conn))) = first.as_mut().poll(&mut cx) else {
            panic!("the first connection is free");
        };
        let mut second = std::pin::pin!(s.connection());
        assert!(matches!(
            second.as_mut().poll(&mut cx),
            Poll::Ready(Err(Limit::MaxPending))
        ));
        drop(conn);
        let mut out = String::new();
        s.export(&mut out);
        assert!(out.contains("limit=\"max_requests\"} 1"), "{out}");
        assert!(out.contains("limit=\"max_pending\"} 1"), "{out}");
    }

    #[test]
    fn pending_requests_get_a_released_connection() {
        let s = state(&config(&format!(
            "{THREE}\nbreaker = {{ max_connections = 1 }}"
        )));
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut first = std::pin::pin!(s.connection());
        let Poll::Ready(Ok(Some(conn))) = first.as_mut().poll(&mut cx) else {
            panic!("free");
        };
        let mut second = std::pin::pin!(s.connection());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.counters.pending.get(), 1);
        drop(conn);
        assert!(matches!(
            second.as_mut().poll(&mut cx),
            Poll::Ready(Ok(Some(_)))
        ));
        assert_eq!(s.counters.pending.get(), 0);
    }

    #[test]
    fn budget_counts_retries_and_refusals() {
        let s = state(&config(&format!(
            "{THREE}\nretries = {{ budget = \"50%\", min_retries = 0 }}"
        )));
        let now = Instant::now();
        for _ in 0..4 {
            s.count_request(now);
        }
        let granted = (0..4).filter(|_| s.try_retry(now)).count();
        assert_eq!(granted, 2);
        let mut out = String::new();
        s.export(&mut out);
        assert!(
            out.contains("ringgate_retries_total{upstream=\"api\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("ringgate_retry_budget_exhausted_total{upstream=\"api\"} 2"),
            "{out}"
        );
    }

    #[test]
    fn latency_average_follows_samples() {
        let s = state(&config(&format!("{THREE}\nbalance = \"p2c_ewma\"")));
        let now = Instant::now();
        s.record(0, Attempt::Success(Duration::from_millis(10)), now);
        assert_eq!(s.targets[0].live.latency_us.get(), 10_000.0);
        s.record(0, Attempt::Success(Duration::from_millis(20)), now);
        assert_eq!(s.targets[0].live.latency_us.get(), 13_000.0);
        s.record(1, Attempt::Failure, now);
        assert_eq!(s.targets[1].live.latency_us.get(), FAILURE_PENALTY_US);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
