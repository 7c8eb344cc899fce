//! One worker per core: its own monoio runtime (io_uring with the tuned ring, or epoll), its
//! own listeners, pools, counters and drain state. Everything here is `!Send` and touched by
//! this thread only; the routing snapshot is the one thing read from shared memory.
//! The hot path starts at [`conn::serve`].

pub mod accept;
pub mod conn;
pub mod drain;
pub mod spares;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::access::jwt::{self, JwtCache};
use crate::accesslog;
use crate::buffers::Buffers;
use crate::cache::{Cache, CacheConfig, Key};
use crate::config::{CacheSettings, Driver, RateLimit, Steer};
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, Limiter};
use crate::routing::{LocalSnapshot, Snapshot};
use crate::upstream::pool::Pool;
use crate::upstream::state::UpstreamState;
use drain::Drain;

pub struct Worker {
    pub id: usize,
    /// The I/O driver this worker's runtime runs on.
    pub driver: RunningDriver,
    /// How many workers share the listeners (rate limits not tied to a client are split
    /// among them).
    pub workers: usize,
    local: RefCell<LocalSnapshot>,
    /// The snapshot requests use with this worker's upstream state for it, in an `Rc` so
    /// taking it per request costs no atomic operation; replaced when the shared snapshot's
    /// pointer changes.
    current: RefCell<Rc<Current>>,
    pub pool: Pool,
    /// Large receive buffers lent to connections relaying large bodies.
    pub buffers: Buffers,
    /// Buffers, heads and scratch of closed connections, for the next ones.
    pub spares: spares::Spares,
    pub metrics: Metrics,
    pub drain: Drain,
    next_conn: Cell<u64>,
    /// The addresses this worker accepts on, each with the switch that closes its loop.
    pub listeners: RefCell<Vec<(std::net::SocketAddr, Rc<accept::Shut>)>>,
    /// How many listeners were ever opened, so each accept loop gets its own drain-waiter id.
    pub listeners_opened: Cell<u64>,
    /// The last time read by [`Worker::now`]: deadlines that may be late by the duration of
    /// one turn of this worker's loop take it instead of reading the clock again.
    clock: Cell<Instant>,
    /// Generated request ids: a random prefix chosen at start, then a count.
    request_ids: (u64, Cell<u64>),
    /// This worker's shard of each rate-limit policy, by name; rebuilt when a reload changes
    /// the policy.
    limiters: RefCell<ahash::AHashMap<String, (RateLimit, Limiter)>>,
    /// This worker's cache shard, rebuilt when a reload changes `[cache]`.
    cache: RefCell<Option<(CacheSettings, Cache)>>,
    /// Cache misses being fetched, with the requests waiting for them (coalescing).
    fetching: RefCell<ahash::AHashMap<Key, Vec<Waker>>>,
    /// Verified JWTs, so a token seen again skips its signature check until it expires.
    pub jwt: RefCell<JwtCache>,
    /// This worker's access log, if `[log] access` is on (opened at start; a reload does not
    /// change it).
    pub log: RefCell<Option<accesslog::Writer>>,
}

impl Worker {
    /// Whether this worker's plain sends try `send(2)` before the driver's op: a saving on
    /// epoll, a loss on io_uring ([`Wire::new`](crate::wire::Wire::new)).
    pub fn direct_sends(&self) -> bool {
        self.driver == RunningDriver::Epoll
    }

    /// Whether dropping a stream closes it only with the next batch of operations (io_uring),
    /// so that a connection we end wants its FIN sent first ([`Wire::fin`](crate::wire::Wire::fin)).
    pub fn closes_late(&self) -> bool {
        self.driver == RunningDriver::IoUring
    }

    pub fn new(
        id: usize,
        workers: usize,
        driver: RunningDriver,
        mut local: LocalSnapshot,
    ) -> Worker {
        let request_ids = (random_u64(), Cell::new(0));
        let current = Rc::new(Current::new(
            Arc::clone(local.load()),
            &[],
            request_ids.0,
            Instant::now(),
        ));
        let log = accesslog::Writer::open(&current.config.log).unwrap_or_else(|e| {
            tracing::error!(worker = id, "access log cannot be opened, logging off: {e}");
            None
        });
        Worker {
            id,
            driver,
            workers,
            local: RefCell::new(local),
            current: RefCell::new(current),
            pool: Pool::default(),
            buffers: Buffers::default(),
            spares: spares::Spares::default(),
            metrics: Metrics::default(),
            drain: Drain::default(),
            next_conn: Cell::new(1),
            listeners: RefCell::new(Vec::new()),
            listeners_opened: Cell::new(0),
            clock: Cell::new(Instant::now()),
            request_ids,
            limiters: RefCell::new(ahash::AHashMap::new()),
            cache: RefCell::new(None),
            fetching: RefCell::new(ahash::AHashMap::new()),
            jwt: RefCell::new(JwtCache::new(jwt::DEFAULT_CACHE_ENTRIES)),
            log: RefCell::new(log),
        }
    }

    /// Reads the clock, and remembers it for [`Worker::recent`].
    pub fn now(&self) -> Instant {
        let now = Instant::now();
        self.clock.set(now);
        now
    }

    /// The time [`Worker::now`] last read: the start or the end of a request on this worker,
    /// or the start of a connection. Reading the clock costs about as much as parsing a
    /// header field, and a request reads it three times instead of nine.
    pub fn recent(&self) -> Instant {
        self.clock.get()
    }

    /// Writes a new request id: 32 hex digits, unique across workers and restarts (a random
    /// 64-bit prefix per worker, then this worker's count).
    pub fn request_id(&self, out: &mut Vec<u8>) {
        let (prefix, count) = &self.request_ids;
        let n = count.get();
        count.set(n.wrapping_add(1));
        // Two digits per table lookup, appended once: a push per digit cost 3% of a proxied
        // request.
        let mut id = [[0u8; 2]; 16];
        let (high, low) = id.split_at_mut(8);
        for (digits, word) in [(high, *prefix), (low, n)] {
            for (pair, byte) in digits.iter_mut().zip(word.to_be_bytes()) {
                *pair = crate::http::encode::hex_pair(byte);
            }
        }
        out.extend_from_slice(id.as_flattened());
    }

    /// This worker's counters, cache and upstream figures, for the control thread to sum.
    pub fn export_metrics(&self) -> String {
        let mut text = self.metrics.export(self.drain.connections());
        let id = self.id;
        text.push_str(&format!(
            "ringgate_worker_connections_open{{worker=\"{id}\"}} {}\nringgate_upstream_idle_connections{{worker=\"{id}\"}} {}\n\
             ringgate_relay_buffers_lent{{worker=\"{id}\"}} {}\nringgate_relay_buffers_exhausted_total{{worker=\"{id}\"}} {}\n",
            self.drain.connections(),
            self.pool.idle_count(),
            self.buffers.lent(),
            self.buffers.exhausted()
        ));
        for (name, (_, limiter)) in self.limiters.borrow().iter() {
            text.push_str(&format!(
                "ringgate_rate_limit_keys{{policy=\"{name}\"}} {}\nringgate_rate_limit_evictions_total{{policy=\"{name}\"}} {}\n",
                limiter.keys(),
                limiter.evictions()
            ));
        }
        self.metrics.export_tls(&mut text);
        for upstream in &self.current.borrow().upstreams {
            upstream.export(&mut text);
        }
        if let Some((_, cache)) = self.cache.borrow().as_ref() {
            let st = cache.stats();
            for (name, value) in [
                ("ringgate_cache_entries", st.entries as u64),
                ("ringgate_cache_bytes", st.bytes as u64),
                ("ringgate_cache_hits_total", st.hits),
                ("ringgate_cache_misses_total", st.misses),
                ("ringgate_cache_evictions_total", st.evictions),
            ] {
                text.push_str(&format!("{name} {value}\n"));
            }
        }
        text
    }

    /// Writes the access log's buffered lines (every second, and when the worker stops).
    pub fn flush_log(&self) {
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.flush();
        }
    }

    /// Runs `f` on this worker's cache shard for `settings` (its share of the memory).
    pub fn with_cache<R>(&self, settings: &CacheSettings, f: impl FnOnce(&mut Cache) -> R) -> R {
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().is_some_and(|(s, _)| s != settings) {
            *cache = None;
        }
        let (_, shard) = cache.get_or_insert_with(|| {
            let shard = CacheConfig {
                memory: usize::try_from(settings.memory / self.workers.max(1) as u64)
                    .unwrap_or(usize::MAX),
                max_object: usize::try_from(settings.max_object).unwrap_or(usize::MAX),
                default_ttl: None,
            };
            (settings.clone(), Cache::new(shard))
        });
        f(shard)
    }

    /// Whether a request for `key` is being fetched already.
    pub fn is_fetching(&self, key: Key) -> bool {
        self.fetching.borrow().contains_key(&key)
    }

    /// Marks `key` as being fetched until the guard drops, which wakes the waiters.
    pub fn begin_fetch(&self, key: Key) -> Fetch<'_> {
        self.fetching.borrow_mut().insert(key, Vec::new());
        Fetch { worker: self, key }
    }

    /// Resolves when nobody fetches `key` any more.
    pub fn fetched(&self, key: Key) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| match self.fetching.borrow_mut().get_mut(&key) {
            Some(waiters) => {
                waiters.push(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(()),
        })
    }

    /// Takes a token for `key` from this worker's shard of `policy`; also returns the
    /// shard's limit for the RateLimit-Limit header.
    pub fn rate_check(&self, policy: &RateLimit, steer: Steer, key: &[u8]) -> (Decision, u64) {
        let mut limiters = self.limiters.borrow_mut();
        let stale = limiters.get(&policy.name).is_none_or(|(p, _)| p != policy);
        if stale {
            // A client key steered to this worker is this worker's alone: the full rate.
            let share = if steer == Steer::ClientIp && policy.key.follows_client() {
                1
            } else {
                self.workers as u64
            };
            let limiter = Limiter::new(
                policy.rate,
                policy.per,
                policy.burst,
                policy.max_keys,
                share,
            );
            limiters.insert(policy.name.clone(), (policy.clone(), limiter));
        }
        match limiters.get_mut(&policy.name) {
            Some((_, limiter)) => (limiter.check(key, self.recent()), limiter.limit()),
            None => (
                Decision::Allow {
                    remaining: 0,
                    reset: 0,
                },
                0,
            ),
        }
    }

    /// The routing snapshot for one request, with this worker's upstream state for it: a
    /// request keeps what it started with. The `Rc` is the per-request handle (no atomic);
    /// the `Arc` inside is what the control thread published. The first request after a
    /// publish rebuilds the upstream state, carrying over what stays.
    pub fn snapshot(&self) -> Rc<Current> {
        let mut local = self.local.borrow_mut();
        let latest = local.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(&current.snapshot, latest) {
            *current = Rc::new(Current::new(
                Arc::clone(latest),
                &current.upstreams,
                self.request_ids.0,
                self.recent(),
            ));
        }
        Rc::clone(&current)
    }

    /// A connection id, unique in this worker.
    pub fn next_conn_id(&self) -> u64 {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }
}

/// What a request reads for its whole life: the routing snapshot it started with, and this
/// worker's state of that snapshot's upstreams.
pub struct Current {
    /// In an `Rc` of its own too, for the per-route counts that keep it (`metrics`).
    pub snapshot: Rc<Arc<Snapshot>>,
    /// By the index of `snapshot.config.upstreams`.
    pub upstreams: Vec<Rc<UpstreamState>>,
    /// By route index: a direct answer's status line and fields, made in advance.
    pub direct: Vec<Option<Vec<u8>>>,
}

impl Current {
    fn new(
        snapshot: Arc<Snapshot>,
        before: &[Rc<UpstreamState>],
        seed: u64,
        now: Instant,
    ) -> Current {
        let upstreams =
            UpstreamState::build_all(&snapshot.config, &snapshot.upstreams, before, seed, now);
        Current {
            direct: crate::proxy::direct_answers(&snapshot.config.routes),
            snapshot: Rc::new(snapshot),
            upstreams,
        }
    }
}

impl std::ops::Deref for Current {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// 64 random bits from the kernel (the clock and the thread as a fallback).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the kernel writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
}

/// A cache miss being fetched; dropping it (stored or failed) lets the waiters look again.
pub struct Fetch<'a> {
    worker: &'a Worker,
    key: Key,
}

impl Drop for Fetch<'_> {
    fn drop(&mut self) {
        let waiters = self.worker.fetching.borrow_mut().remove(&self.key);
        for waker in waiters.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// The I/O driver a worker actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningDriver {
    IoUring,
    Epoll,
}

impl std::fmt::Display for RunningDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunningDriver::IoUring => "io_uring",
            RunningDriver::Epoll => "epoll",
        })
    }
}

const RING_ENTRIES: u32 = 1024;

/// Runs `task` to completion on a runtime with the configured driver. `auto` tries io_uring
/// with COOP_TASKRUN + SINGLE_ISSUER, then a plain ring (older kernels reject the flags), then
/// epoll (io_uring disabled by sysctl or seccomp).
///
/// DEFER_TASKRUN is left out on purpose: it saved CPU per request at saturation, but under a
/// fixed, partial load it held completions back and put p99 at 55 ms where epoll had 1.7 ms
/// (docs/performance.md, "io_uring ring flags").
pub fn run<F, Fut>(driver: Driver, task: F) -> io::Result<()>
where
    F: FnOnce(RunningDriver) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if driver != Driver::Epoll {
        let mut tuned = io_uring::IoUring::builder();
        tuned.setup_coop_taskrun().setup_single_issuer();
        let mut last_error = None;
        for ring in [tuned, io_uring::IoUring::builder()] {
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .with_entries(RING_ENTRIES)
                .uring_builder(ring)
                .build();
            match built {
                Ok(mut rt) => {
                    rt.block_on(task(RunningDriver::IoUring));
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
        }
        if driver == Driver::IoUring {
            return Err(last_error.unwrap_or_else(|| io::Error::other("io_uring unavailable")));
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(task(RunningDriver::Epoll));
    Ok(())
}
