//! A connection's read deadline: one long-lived timer per kind of wait (the client's next
//! request, an upstream's response head), moved lazily so that a keep-alive request registers
//! and removes no timer.
//!
//! `monoio::time::timeout` creates a timer entry per read: a wheel insert when the read has
//! to wait (almost every keep-alive read does) and a wheel removal when it completes, plus a
//! runtime-handle lookup and a clock conversion; twice per proxied request that was about 3%
//! of the instructions a request costs. Here the timer stays registered for the life of the
//! connection: a later deadline is only written down (deadlines of one kind only move
//! forward as requests go by), and the timer, when it fires early, re-arms itself for the
//! deadline written down. Only an earlier deadline (a partial head's `header_timeout` after an
//! idle wait) moves the timer in the wheel.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use monoio::time::Sleep;

/// One timer for one kind of read on one connection.
#[derive(Default)]
pub struct Deadline {
    /// Made on first use (a connection that never waits needs none); it fires at its
    /// `deadline()`, never after the deadline of the read waiting on it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer holds this connection's waker: it was polled since it was made or moved.
    /// All of a connection's reads run in its one task, so that waker stays good, and a timer
    /// still registered needs no poll to keep it.
    polled: bool,
}

impl Deadline {
    /// Whether a timer was made (and so holds the waker of the task that last polled it).
    #[cfg(test)]
    pub fn has_timer(&self) -> bool {
        self.timer.is_some()
    }

    /// Runs `read` until it completes (`Some`) or `at` passes first (`None`). A completed read
    /// wins over a deadline that passed while it was pending. The caller pins the read where
    /// it stands: a read future is large (a TLS read's state is in it), and this saves a copy.
    pub async fn within<F: Future>(
        &mut self,
        at: Instant,
        mut read: Pin<&mut F>,
    ) -> Option<F::Output> {
        let due = monoio::time::Instant::from(at);
        poll_fn(|cx| {
            if let Poll::Ready(done) = read.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            // An earlier deadline moves the timer now; a later one waits until it fires.
            let timer = match &mut self.timer {
                Some(timer) if due < timer.deadline() => {
                    timer.as_mut().reset(due);
                    self.polled = false;
                    timer
                }
                Some(timer) => timer,
                slot => {
                    self.polled = false;
                    slot.insert(Box::pin(monoio::time::sleep_until(due)))
                }
            };
            loop {
                if self.polled && !timer.is_elapsed() {
                    return Poll::Pending;
                }
                self.polled = true;
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // It fired at an earlier read's deadline: re-arm it for this one's.
                if Instant::now() >= at {
                    return Poll::Ready(None);
                }
                timer.as_mut().reset(due);
                self.polled = false;
            }
        })
        .await
    }
}
