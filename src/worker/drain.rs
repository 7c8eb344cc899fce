//! Graceful drain within one worker: a flag every task can check, futures that wake when the
//! drain starts (idle keep-alive reads, the accept loop) and one that wakes when the last
//! connection has closed. Single-threaded (`Cell`/`RefCell`), so nothing here is atomic.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    /// Who waits for the drain to start, by connection id (0 is the accept loop).
    waiting: RefCell<ahash::AHashMap<u64, Waker>>,
    connections: Cell<usize>,
    closed: RefCell<Option<Waker>>,
}

impl Drain {
    pub fn start(&self) {
        self.draining.set(true);
        for (_, waker) in self.waiting.borrow_mut().drain() {
            waker.wake();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Resolves once the drain has started; `id` must be unique among concurrent waiters. The
    /// future may be polled again after each time it was left pending (a connection keeps one).
    pub fn started(&self, id: u64) -> Started<'_> {
        Started {
            drain: self,
            id,
            registered: None,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Counts a connection open until the guard drops.
    pub fn open(&self) -> Open<'_> {
        self.connections.set(self.connections.get() + 1);
        Open { drain: self }
    }

    /// Resolves when no connection is open.
    pub fn all_closed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.connections.get() == 0 {
                Poll::Ready(())
            } else {
                *self.closed.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

pub struct Started<'a> {
    drain: &'a Drain,
    id: u64,
    /// The waker last put in the drain's map for `id`.
    registered: Option<Waker>,
}

impl Future for Started<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_draining() {
            return Poll::Ready(());
        }
        // A connection polls this once per idle read, with the same task's waker each time:
        // registered once, it skips the map.
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        self.drain
            .waiting
            .borrow_mut()
            .insert(self.id, waker.clone());
        self.registered = Some(waker);
        Poll::Pending
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.drain.waiting.borrow_mut().remove(&self.id);
    }
}

pub struct Open<'a> {
    drain: &'a Drain,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let left = self.drain.connections.get() - 1;
        self.drain.connections.set(left);
        if left == 0 {
            if let Some(waker) = self.drain.closed.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}
