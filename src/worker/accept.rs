//! The accept loop of one listener in one worker: admits connections up to
//! `server.max_connections`, closes (and counts) the rest, hands each to the connection task
//! as plain or TLS (as the listener is configured now), and stops when the drain starts or a
//! reload removes its address.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use std::os::fd::{AsRawFd, BorrowedFd};

use monoio::net::{TcpListener, TcpStream};
use socket2::SockRef;

use crate::metrics::Metrics;
use crate::worker::{conn, RunningDriver, Worker};

/// Starts accepting on `listener` (bound to `addr`) in this worker.
pub fn listen(
    w: &Rc<Worker>,
    addr: SocketAddr,
    listener: std::net::TcpListener,
    max_connections: usize,
    tls: bool,
) -> io::Result<()> {
    // `next_connection` relies on accept4 returning at once when the backlog is empty.
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let shut = Rc::new(Shut::default());
    shut.tls.set(tls);
    shut.fd.set(listener.as_raw_fd());
    // Connection ids count up from 1, so accept loops take drain-waiter ids from the top.
    let opened = w.listeners_opened.get();
    w.listeners_opened.set(opened + 1);
    let waiter = u64::MAX - opened;
    w.listeners.borrow_mut().push((addr, Rc::clone(&shut)));
    monoio::spawn(accept_loop(
        Rc::clone(w),
        listener,
        max_connections,
        waiter,
        shut,
    ));
    Ok(())
}

/// Stops accepting on `addr` in this worker; its connections carry on. A socket of our own
/// (`owned`: not one systemd handed over and keeps) stops listening before this returns, so
/// from then on a connection attempt is refused rather than queued on a socket about to close
/// (which would reset it); the accept loop then ends and closes it.
pub fn unlisten(w: &Worker, addr: SocketAddr, owned: bool) {
    w.listeners.borrow_mut().retain(|(a, shut)| {
        if *a == addr {
            if owned {
                // SAFETY: the accept loop owns this descriptor until it sees `closed`.
                unsafe { libc::shutdown(shut.fd.get(), libc::SHUT_RDWR) };
            }
            shut.close();
        }
        *a != addr
    });
}

/// Makes `addr`'s accept loop in this worker hand out plain or TLS connections from now on.
pub fn set_tls(w: &Worker, addr: SocketAddr, tls: bool) {
    for (a, shut) in w.listeners.borrow().iter() {
        if *a == addr {
            shut.tls.set(tls);
        }
    }
}

/// The switches of one accept loop: close it, and whether its connections speak TLS (a
/// reload can flip that without rebinding).
#[derive(Default)]
pub struct Shut {
    closed: Cell<bool>,
    /// The listening socket's descriptor.
    fd: Cell<std::os::fd::RawFd>,
    waker: RefCell<Option<Waker>>,
    tls: Cell<bool>,
}

impl Shut {
    fn close(&self) {
        self.closed.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn closed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.closed.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// The next connection on `listener`. Under io_uring this does not use an accept operation:
/// one that the drain (or a reload closing the listener) cancels may already have taken a
/// connection from the backlog, which would then be closed unanswered, and with socket
/// activation that backlog belongs to the next process too. Instead it waits for readiness
/// (a poll operation, which takes nothing) and accepts with a non-blocking `accept4`, so a
/// cancelled wait loses nothing. Under load the backlog is rarely empty and the wait is
/// skipped. The epoll driver's accept already works this way.
async fn next_connection(
    listener: &TcpListener,
    driver: RunningDriver,
) -> io::Result<(TcpStream, SocketAddr)> {
    if driver == RunningDriver::Epoll {
        return listener.accept().await;
    }
    loop {
        // SAFETY: the listener owns this descriptor and outlives the borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
        // Non-blocking from accept4 itself: two fcntl calls fewer per connection.
        match SockRef::from(&fd).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
            Ok((socket, peer)) => {
                let peer = peer
                    .as_socket()
                    .ok_or_else(|| io::Error::other("accepted a non-IP connection"))?;
                return Ok((TcpStream::from_std(socket.into())?, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => listener.readable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

async fn accept_loop(
    w: Rc<Worker>,
    listener: TcpListener,
    max_connections: usize,
    waiter: u64,
    shut: Rc<Shut>,
) {
    loop {
        // Biased: a connection already accepted is served (it gets `Connection: close`)
        // rather than dropped when the drain starts at the same moment.
        let accepted = monoio::select! {
            biased;
            a = next_connection(&listener, w.driver) => a,
            _ = w.drain.started(waiter) => return,
            _ = shut.closed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                Metrics::add(&w.metrics.connections);
                if w.drain.connections() >= max_connections {
                    Metrics::add(&w.metrics.connections_refused);
                    tracing::warn!(worker = w.id, %peer, max_connections, "connection refused: worker at max_connections");
                    drop(stream);
                    continue;
                }
                monoio::spawn(conn::serve(Rc::clone(&w), stream, peer, shut.tls.get()));
            }
            // The listener was shut down by `unlisten`.
            Err(_) if shut.closed.get() => return,
            Err(e) => {
                // EMFILE and friends: the listener stays valid, but retrying at once would spin
                // until a descriptor frees up; back off briefly, as nginx does.
                tracing::warn!(worker = w.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
