//! Per-worker keep-alive pools of upstream connections, one per target (target choice is
//! `balance`'s). Nothing here is shared with another worker: a connection opened by this
//! worker is only ever reused by it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::Wire;

/// An upstream connection and how much it has served.
pub struct Upstream {
    pub wire: Wire,
    pub target: SocketAddr,
    /// 0 for a plain connection, else the [`Connector::tag`] of the TLS settings that
    /// verified it: a connection is reused only by the same settings.
    ///
    /// [`Connector::tag`]: crate::tls::Connector::tag
    pub tls: u64,
    /// Requests sent on it so far.
    pub requests: u32,
    /// It came from the pool (so it may have been closed by the upstream meanwhile).
    pub reused: bool,
}

/// Connections travel boxed: a request moves its connection out of the pool and back, and a
/// pointer moves for free where the ~180-byte struct cost a memcpy each time.
pub type Conn = Box<Upstream>;

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    /// By target and TLS tag (0: plain).
    idle: RefCell<ahash::AHashMap<(SocketAddr, u64), Vec<Idle>>>,
}

impl Pool {
    /// The most recently used idle connection to `target` with TLS tag `tls` (0: plain)
    /// that is younger than `idle_timeout` at `now`; older ones are closed on the way.
    pub fn take(
        &self,
        target: SocketAddr,
        tls: u64,
        idle_timeout: Duration,
        now: Instant,
    ) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&(target, tls))?;
        while let Some(entry) = list.pop() {
            if now.saturating_duration_since(entry.since) < idle_timeout {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Idle connections held, over all targets.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }

    /// Keeps `conn` for reuse, idle since `now`, unless `max_idle` connections to its target
    /// are already idle.
    pub fn put(&self, conn: Conn, max_idle: usize, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry((conn.target, conn.tls)).or_default();
        if list.len() < max_idle {
            list.push(Idle { conn, since: now });
        }
    }
}
