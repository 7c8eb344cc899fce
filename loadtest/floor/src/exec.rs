//! The same relay as async functions, as ringgate's pipeline is written, run by an executor
//! of our own instead of monoio: one io_uring with ringgate's flags (COOP_TASKRUN +
//! SINGLE_ISSUER), tasks in a slab polled from a ready queue, a waker that is a task's index
//! (no reference count, no atomics), each operation's result held in a slot until its task
//! polls it, and buffers owned by the operation while it is in flight (monoio's rent API,
//! so that dropping a future never frees memory the kernel writes to). No timers.
//!
//! Sends are not awaited: each goes with MSG_WAITALL (the kernel itself retries a short one),
//! and its completion hands the buffer back to a per-thread pool and wakes no task unless one
//! waits for it (a socket has at most one send in flight, so bytes leave in order). A request
//! is then two task wake-ups, not four, and a send is submitted with the receive after it in
//! one `io_uring_enter`.
//!
//! What it measures: how much of monoio's share of a request (docs/performance.md, "Sixth
//! pass") an executor that keeps async/await gives back. If it lands near `raw.rs`, an own
//! runtime can keep ringgate's async pipeline and swap only what sits under it; if not, the
//! gain needs connections as explicit state machines.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use io_uring::{opcode, squeue, types, IoUring};

use crate::codec::Heads;
use crate::raw::{upstream_for, Mode};

const CAPACITY: usize = 16 * 1024;
/// An operation not yet started.
const UNSTARTED: u32 = u32::MAX;
/// The error of an operation asked of a thread with no ring, or of a slot gone astray: neither
/// happens in this program, and neither is worth a panic in a measurement tool.
const ENXIO: i32 = 6;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// The state of one operation's slot.
enum Slot {
    Free,
    /// In flight: the task its completion wakes.
    Waiting(usize),
    /// Completed; the result waits for the operation's next poll.
    Done(i32),
    /// Dropped in flight: the buffer the kernel may still write to waits for the completion.
    Orphan {
        _kept: Option<Vec<u8>>,
    },
    /// A send no task awaits: its buffer, back to the pool on completion, and its socket's
    /// sends, told how it went.
    Detached {
        buf: Vec<u8>,
        out: Rc<Outgoing>,
    },
}

/// A socket's unawaited sends: at most one in flight, and whether one failed.
#[derive(Default)]
struct Outgoing {
    in_flight: Cell<bool>,
    failed: Cell<bool>,
    /// The task waiting for the send in flight to complete.
    waiter: Cell<Option<usize>>,
}

impl Outgoing {
    fn complete(&self, whole: bool) {
        self.in_flight.set(false);
        if !whole {
            self.failed.set(true);
        }
        if let Some(task) = self.waiter.take() {
            READY.with_borrow_mut(|ready| ready.push_back(task));
        }
    }
}

/// Ready once the socket has no send in flight.
struct Drained<'a>(&'a Outgoing);

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if !self.0.in_flight.get() {
            return Poll::Ready(());
        }
        self.0.waiter.set(Some(CURRENT.get()));
        Poll::Pending
    }
}

struct Driver {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Driver {
    /// Queues `entry` with a slot in `state`; the slot's number is the entry's `user_data`.
    fn start(&mut self, entry: &squeue::Entry, state: Slot) -> io::Result<u32> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::Free);
            self.slots.len() as u32 - 1
        });
        if let Err(e) = push(&mut self.ring, &entry.clone().user_data(u64::from(slot))) {
            self.free.push(slot);
            return Err(e);
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = state;
        }
        Ok(slot)
    }
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
    static READY: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
    static SPAWNED: RefCell<Vec<Task>> = const { RefCell::new(Vec::new()) };
    /// Buffers of `CAPACITY`, empty, for receives and rewritten heads.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// The task being polled: the one an operation started now wakes.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

// A waker's data is a task's index, never dereferenced: cloning and dropping cost nothing, and
// waking queues the index (a waker left over from a finished task wakes a free or reused slot,
// which is at worst a spurious poll).
static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_waker, wake, wake, drop_waker);

fn clone_waker(task: *const ()) -> RawWaker {
    RawWaker::new(task, &VTABLE)
}

fn wake(task: *const ()) {
    READY.with_borrow_mut(|ready| ready.push_back(task as usize));
}

fn drop_waker(_: *const ()) {}

fn take() -> Vec<u8> {
    POOL.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY))
}

fn give(mut buf: Vec<u8>) {
    // One an error path left empty-handed (no capacity) would read as a closed socket.
    if buf.capacity() >= CAPACITY {
        buf.clear();
        POOL.with_borrow_mut(|pool| pool.push(buf));
    }
}

fn spawn(task: impl Future<Output = ()> + 'static) {
    SPAWNED.with_borrow_mut(|spawned| spawned.push(Box::pin(task)));
}

/// One io_uring operation; its output is the completion's result and the buffer it owned.
struct Op {
    entry: Option<squeue::Entry>,
    slot: u32,
    buf: Option<Vec<u8>>,
}

impl Op {
    fn new(entry: squeue::Entry, buf: Option<Vec<u8>>) -> Op {
        Op {
            entry: Some(entry),
            slot: UNSTARTED,
            buf,
        }
    }
}

impl Future for Op {
    type Output = (i32, Option<Vec<u8>>);

    fn poll(mut self: Pin<&mut Op>, _: &mut Context<'_>) -> Poll<Self::Output> {
        let op = &mut *self;
        let finished = DRIVER.with_borrow_mut(|driver| {
            let Some(driver) = driver.as_mut() else {
                return Some(-ENXIO);
            };
            if let Some(entry) = op.entry.take() {
                match driver.start(&entry, Slot::Waiting(CURRENT.get())) {
                    Ok(slot) => op.slot = slot,
                    Err(e) => return Some(-e.raw_os_error().unwrap_or(ENXIO)),
                }
                return None;
            }
            let s = driver.slots.get_mut(op.slot as usize)?;
            match *s {
                Slot::Done(result) => {
                    *s = Slot::Free;
                    driver.free.push(op.slot);
                    op.slot = UNSTARTED;
                    Some(result)
                }
                Slot::Waiting(ref mut task) => {
                    *task = CURRENT.get();
                    None
                }
                Slot::Free | Slot::Orphan { .. } | Slot::Detached { .. } => Some(-ENXIO),
            }
        });
        match finished {
            Some(result) => Poll::Ready((result, op.buf.take())),
            None => Poll::Pending,
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.slot == UNSTARTED {
            return;
        }
        let buf = self.buf.take();
        DRIVER.with_borrow_mut(|driver| {
            let Some(d) = driver.as_mut() else { return };
            let Some(s) = d.slots.get_mut(self.slot as usize) else {
                return;
            };
            match s {
                Slot::Waiting(_) => *s = Slot::Orphan { _kept: buf },
                _ => {
                    *s = Slot::Free;
                    d.free.push(self.slot);
                }
            }
        });
    }
}

/// Puts one entry on the submission queue, submitting first if it is full.
fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every buffer an entry points at is owned by its `Op` until the completion, or by
    // the slot (`Slot::Orphan`, once the `Op` is dropped; `Slot::Detached`, for a send).
    while unsafe { ring.submission().push(entry) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

/// Receives into `buf`'s spare capacity; `buf` comes back holding what was read.
async fn recv(fd: RawFd, mut buf: Vec<u8>) -> (i32, Vec<u8>) {
    buf.clear();
    let entry = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.capacity() as u32).build();
    let (result, buf) = Op::new(entry, Some(buf)).await;
    let mut buf = buf.unwrap_or_default();
    if let Some(n) = usize::try_from(result)
        .ok()
        .filter(|&n| n <= buf.capacity())
    {
        // SAFETY: the kernel wrote the first `n` bytes, and `n` is within the capacity.
        unsafe { buf.set_len(n) };
    }
    (result, buf)
}

/// Sends all of `buf` on `fd` once the socket's send in flight, if any, has completed, and
/// does not wait for this one. False when an earlier send on the socket failed or the ring
/// refused this one.
async fn send(fd: RawFd, buf: Vec<u8>, out: &Rc<Outgoing>) -> bool {
    Drained(out).await;
    if out.failed.get() {
        give(buf);
        return false;
    }
    let entry = opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
        .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
        .build();
    // SAFETY of the pointer: the buffer moves into the slot (its heap memory stays put) and
    // stays there until the completion.
    let state = Slot::Detached {
        buf,
        out: Rc::clone(out),
    };
    let started = DRIVER.with_borrow_mut(|driver| match driver.as_mut() {
        Some(driver) => driver.start(&entry, state).is_ok(),
        None => false,
    });
    out.in_flight.set(started);
    started
}

/// Serves `listen` in `mode` (`answer` is the direct one) until an error ends the loop.
pub fn run(listen: &str, backend: &str, mode: Mode, answer: &'static [u8]) -> io::Error {
    let Err(e) = serve(listen, backend, mode, answer);
    e
}

fn serve(
    listen: &str,
    backend: &str,
    mode: Mode,
    answer: &'static [u8],
) -> io::Result<std::convert::Infallible> {
    let listener = TcpListener::bind(listen)?;
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(1024)?;
    DRIVER.set(Some(Driver {
        ring,
        slots: Vec::with_capacity(1024),
        free: Vec::with_capacity(1024),
    }));
    spawn(accept(listener, backend.to_owned(), mode, answer));
    let mut tasks: Vec<Option<Task>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut short_sends = 0u64;
    loop {
        loop {
            for task in SPAWNED.with_borrow_mut(std::mem::take) {
                let index = match free.pop() {
                    Some(index) => index,
                    None => {
                        tasks.push(None);
                        tasks.len() - 1
                    }
                };
                if let Some(slot) = tasks.get_mut(index) {
                    *slot = Some(task);
                }
                READY.with_borrow_mut(|ready| ready.push_back(index));
            }
            let Some(index) = READY.with_borrow_mut(VecDeque::pop_front) else {
                break;
            };
            let Some(slot) = tasks.get_mut(index) else {
                continue;
            };
            let Some(mut task) = slot.take() else {
                continue;
            };
            CURRENT.set(index);
            // SAFETY: the vtable's functions never dereference the data (a task's index).
            let waker = unsafe { Waker::from_raw(RawWaker::new(index as *const (), &VTABLE)) };
            match task.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Pending => *slot = Some(task),
                Poll::Ready(()) => free.push(index),
            }
        }
        DRIVER.with_borrow_mut(|driver| -> io::Result<()> {
            let Some(Driver { ring, slots, free }) = driver.as_mut() else {
                return Ok(());
            };
            match ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                other => other?,
            };
            for completion in ring.completion() {
                let (slot, result) = (completion.user_data() as u32, completion.result());
                let Some(s) = slots.get_mut(slot as usize) else {
                    continue;
                };
                match std::mem::replace(s, Slot::Free) {
                    Slot::Waiting(task) => {
                        *s = Slot::Done(result);
                        READY.with_borrow_mut(|ready| ready.push_back(task));
                    }
                    // Nothing waits for it: the buffer is dropped here, and the slot freed.
                    Slot::Orphan { .. } => free.push(slot),
                    Slot::Detached { buf, out } => {
                        free.push(slot);
                        let whole = usize::try_from(result) == Ok(buf.len());
                        if result > 0 && !whole {
                            short_sends += 1;
                            eprintln!(
                                "ringgate-floor: a short send ended a connection ({short_sends} so far)"
                            );
                        }
                        out.complete(whole);
                        give(buf);
                    }
                    Slot::Free => {}
                    Slot::Done(result) => *s = Slot::Done(result),
                }
            }
            Ok(())
        })?;
    }
}

/// Accepts clients and spawns a relay for each, with its upstream connection (`upstream_for`).
async fn accept(listener: TcpListener, backend: String, mode: Mode, answer: &'static [u8]) {
    let fd = listener.as_raw_fd();
    let mut refused = 0u64;
    loop {
        let entry =
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut()).build();
        let (result, _) = Op::new(entry, None).await;
        let opened = match result {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            fd @ 0.. => Ok(unsafe { TcpStream::from_raw_fd(fd as RawFd) }),
            errno => Err(io::Error::from_raw_os_error(-errno)),
        }
        .and_then(|client| {
            let upstream = upstream_for(&client, &backend, mode == Mode::Direct)?;
            Ok((client, upstream))
        });
        match opened {
            Ok((client, upstream)) => spawn(relay(client, upstream, mode, answer)),
            // Counted and said, so that a failing relay never reads as a fast one.
            Err(e) => {
                refused += 1;
                eprintln!("ringgate-floor: a connection not served ({refused} so far): {e}");
            }
        }
    }
}

/// Request in, request up, response back, response out, until either side closes; each read
/// taken to hold one whole request or response, as in the other relays.
async fn relay(client: TcpStream, upstream: Option<TcpStream>, mode: Mode, answer: &[u8]) {
    let c = client.as_raw_fd();
    let up = upstream.as_ref().map(AsRawFd::as_raw_fd);
    let (to_client, to_upstream) = (Rc::new(Outgoing::default()), Rc::new(Outgoing::default()));
    let mut heads = Heads::new();
    while exchange(c, up, mode, answer, &mut heads, [&to_client, &to_upstream]).await {}
    // What was taken on is sent before the sockets close.
    Drained(&to_client).await;
    Drained(&to_upstream).await;
}

/// One request and its answer (`answer` itself when there is no upstream); false once either
/// side has closed or a send failed. `outgoing`: the client's sends, the upstream's.
async fn exchange(
    c: RawFd,
    up: Option<RawFd>,
    mode: Mode,
    answer: &[u8],
    heads: &mut Heads,
    [to_client, to_upstream]: [&Rc<Outgoing>; 2],
) -> bool {
    let (n, request) = recv(c, take()).await;
    if n <= 0 {
        give(request);
        return false;
    }
    let Some(up) = up else {
        give(request);
        let mut reply = take();
        reply.extend_from_slice(answer);
        return send(c, reply, to_client).await;
    };
    if !pass_on(up, request, mode, heads, true, to_upstream).await {
        return false;
    }
    let (n, response) = recv(up, take()).await;
    if n <= 0 {
        give(response);
        return false;
    }
    pass_on(c, response, mode, heads, false, to_client).await
}

/// Sends `data` on to `fd`: as it is, or, in `Mode::Codec`, through the codec first.
async fn pass_on(
    fd: RawFd,
    data: Vec<u8>,
    mode: Mode,
    heads: &mut Heads,
    from_client: bool,
    out: &Rc<Outgoing>,
) -> bool {
    if mode != Mode::Codec {
        return send(fd, data, out).await;
    }
    let mut rewritten = take();
    let whole = heads.rewrite(&data, from_client, &mut rewritten).is_some();
    give(data);
    if !whole {
        give(rewritten);
        eprintln!("ringgate-floor: a head not whole in one read or refused by the codec");
        return false;
    }
    send(fd, rewritten, out).await
}
