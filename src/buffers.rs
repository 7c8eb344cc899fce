//! The worker's spare large receive buffers. One is lent to a connection while it relays a
//! large body, so the body moves in a few large reads and sends rather than in reads of the
//! connection's own 16 KiB: a 1 MiB response through the proxy cost 632 CPU µs in 16 KiB
//! pieces and 429–503 in 256 KiB ones (`loadtest/run --scenario proxy-large`;
//! docs/performance.md, "Seventh pass" and the full runs). Bounded: at most [`LENT_MAX`] are
//! out at a time per worker; past that a relay reads into the connection's own buffer and
//! asks again before each read, so that it gets one as soon as one comes back: a relay
//! refused for its whole body moved it 16 times slower than its neighbours, and the p99 of
//! 1 MiB downloads on 64 connections was 150–276 ms where it is now 39–50
//! (docs/performance.md, "Ninth pass"). A buffer comes back to the pool after its relay, so
//! a worker allocates at most [`LENT_MAX`] of them while it runs, plus one for each relay
//! cancelled in a read (that buffer is freed with the read).

use std::cell::{Cell, RefCell};

use crate::wire::Wire;

/// The capacity of a lent buffer.
pub const LARGE: usize = 256 * 1024;
/// How many a worker lends at a time: at most 8 MiB per worker.
pub const LENT_MAX: usize = 32;

#[derive(Default)]
pub struct Buffers {
    spare: RefCell<Vec<Vec<u8>>>,
    lent: Cell<usize>,
    /// Relays that asked for one while all were lent (each counted once).
    exhausted: Cell<u64>,
}

/// A large buffer lent to a wire. [`Lease::restore`] gives the wire its own buffer back and
/// the large one to the pool; the lease stops counting against [`LENT_MAX`] when dropped.
pub struct Lease<'a> {
    buffers: &'a Buffers,
    own: Vec<u8>,
}

impl Buffers {
    /// Lends `wire` a large receive buffer in place of its own, if fewer than [`LENT_MAX`]
    /// are out. A refusal is not counted here: a relay asks again before each read, and
    /// counts itself once with [`Buffers::refused`].
    pub fn lend<'a>(&'a self, wire: &mut Wire) -> Option<Lease<'a>> {
        if self.lent.get() >= LENT_MAX {
            return None;
        }
        let large = self
            .spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LARGE));
        self.lent.set(self.lent.get() + 1);
        Some(Lease {
            buffers: self,
            own: wire.swap_buffer(large),
        })
    }

    /// How many buffers are lent now.
    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    /// Counts a relay that found every buffer lent.
    pub fn refused(&self) {
        self.exhausted.set(self.exhausted.get() + 1);
    }

    /// How many relays found every buffer lent and read into the connection's own for a
    /// while.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.get()
    }
}

impl Lease<'_> {
    /// Gives `wire` its own buffer back (with any bytes it holds past the body) and keeps the
    /// large one for the next relay. A read cancelled under the lease took the large buffer
    /// with it; then there is nothing to keep.
    pub fn restore(mut self, wire: &mut Wire) {
        let large = wire.swap_buffer(std::mem::take(&mut self.own));
        if large.capacity() >= LARGE {
            self.buffers.spare.borrow_mut().push(large);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.buffers
            .lent
            .set(self.buffers.lent.get().saturating_sub(1));
    }
}
