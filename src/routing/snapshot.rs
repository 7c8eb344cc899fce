//! The configuration workers serve from, swapped whole on reload: the control thread builds a
//! [`Snapshot`] off the hot path and publishes it through the [`SharedSnapshot`]; each worker
//! reads it through its own [`LocalSnapshot`], which costs one relaxed atomic load per check
//! while nothing changed. A request loads the snapshot once and keeps it, so a reload never
//! splits one request between two configurations. The snapshot also carries the TLS server
//! config, built here off the hot path.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Cache};

use rustls::server::ProducesTickets;

use super::RouteTable;
use crate::config::Config;
use crate::tls::{self, Acceptor};
use crate::upstream::state::Shared;

/// One published configuration with its compiled route table.
#[derive(Debug)]
pub struct Snapshot {
    /// 0 for the configuration started with, +1 per publish.
    pub generation: u64,
    pub config: Config,
    /// Compiled from `config.routes`; its answers index that slice.
    pub table: RouteTable,
    /// The rustls config for `config.server.tls` (None without certificates). A connection
    /// takes it at accept, so a reload's certificates serve new connections while open ones
    /// keep the config they shook hands with.
    pub tls: Option<Acceptor>,
    /// The shared part of each of `config.upstreams` (active-health words, Maglev tables),
    /// by the same index.
    pub upstreams: Vec<Shared>,
}

impl Snapshot {
    pub fn new(generation: u64, config: Config) -> Snapshot {
        let mut snapshot = Snapshot::with_ticketer(generation, config, None);
        snapshot.upstreams = Shared::build(&snapshot.config, None);
        snapshot
    }

    /// As [`Snapshot::new`], issuing session tickets with `ticketer` (an earlier snapshot's,
    /// so that tickets survive the reload) or, if None, a new one; without the upstreams'
    /// shared parts, which depend on the snapshot this one follows.
    fn with_ticketer(
        generation: u64,
        config: Config,
        ticketer: Option<Arc<dyn ProducesTickets>>,
    ) -> Snapshot {
        let tls = match config.server.tls.is_empty() {
            true => None,
            false => Acceptor::new(&config.server.tls, ticketer.or_else(tls::new_ticketer)),
        };
        Snapshot {
            generation,
            table: RouteTable::new(&config.routes),
            config,
            tls,
            upstreams: Vec::new(),
        }
    }
}

/// Generation 0 of `config`.
impl From<Config> for Snapshot {
    fn from(config: Config) -> Snapshot {
        Snapshot::new(0, config)
    }
}

/// The current snapshot, shared by the control thread and every worker (through
/// `Arc<SharedSnapshot>`).
#[derive(Debug)]
pub struct SharedSnapshot {
    /// In its own `Arc` so that each worker's cache can own a reference to it.
    current: Arc<ArcSwap<Snapshot>>,
    /// Serialises publishers so that generations rise in the order snapshots are stored.
    /// Control plane only: workers never touch it.
    publishing: Mutex<()>,
}

impl SharedSnapshot {
    /// Starts from `initial`: a [`Snapshot`], or a [`Config`] as generation 0.
    pub fn new(initial: impl Into<Snapshot>) -> SharedSnapshot {
        SharedSnapshot {
            current: Arc::new(ArcSwap::from_pointee(initial.into())),
            publishing: Mutex::new(()),
        }
    }

    /// The snapshot now current (for the control plane; workers use [`LocalSnapshot`]).
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The generation of the snapshot now current.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Builds `config`'s route table and makes it current; returns its generation. Requests in
    /// flight finish on the snapshot they started with.
    pub fn publish(&self, config: Config) -> u64 {
        // The table and the TLS config are built before taking the lock: they are the slow
        // part.
        let ticketer = self
            .current
            .load()
            .tls
            .as_ref()
            .and_then(Acceptor::ticketer);
        let mut next = Snapshot::with_ticketer(0, config, ticketer);
        // The guarded value is `()`: a publisher that panicked left nothing inconsistent.
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Under the lock, so that health words and Maglev tables carry over from the very
        // snapshot this one replaces: a reload keeps what the checks found.
        let previous = self.current.load_full();
        next.upstreams = Shared::build(&next.config, Some((&previous.config, &previous.upstreams)));
        next.generation = previous.generation + 1;
        let generation = next.generation;
        self.current.store(Arc::new(next));
        generation
    }

    /// A per-worker reader.
    pub fn handle(&self) -> LocalSnapshot {
        LocalSnapshot {
            cache: Cache::new(Arc::clone(&self.current)),
        }
    }
}

/// One worker's view of the [`SharedSnapshot`]. It holds the snapshot it last loaded, so an
/// old snapshot is freed only once every worker has loaded a newer one.
#[derive(Debug)]
pub struct LocalSnapshot {
    cache: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
}

impl LocalSnapshot {
    /// The current snapshot: a cheap check of the shared pointer, and a full load only after
    /// a publish.
    pub fn load(&mut self) -> &Arc<Snapshot> {
        self.cache.load()
    }
}
