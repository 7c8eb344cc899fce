//! The same relay as async functions, as ringgate's pipeline is written, run by an executor
//! of our own instead of monoio: one io_uring with ringgate's flags (COOP_TASKRUN +
//! SINGLE_ISSUER), tasks in a slab polled from a ready queue, a waker that is a task's index
//! (no reference count, no atomics), each operation's result held in a slot until its task
//! polls it, and buffers owned by the operation while it is in flight (monoio's rent API,
//! so that dropping a future never frees memory the kernel writes to). No timers.
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
}

struct Driver {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
    static READY: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
    static SPAWNED: RefCell<Vec<Task>> = const { RefCell::new(Vec::new()) };
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
            let Some(Driver { ring, slots, free }) = driver.as_mut() else {
                return Some(-ENXIO);
            };
            if let Some(entry) = op.entry.take() {
                let slot = free.pop().unwrap_or_else(|| {
                    slots.push(Slot::Free);
                    slots.len() as u32 - 1
                });
                if let Err(e) = push(ring, &entry.user_data(u64::from(slot))) {
                    free.push(slot);
                    return Some(-e.raw_os_error().unwrap_or(ENXIO));
                }
                if let Some(s) = slots.get_mut(slot as usize) {
                    *s = Slot::Waiting(CURRENT.get());
                }
                op.slot = slot;
                return None;
            }
            let s = slots.get_mut(op.slot as usize)?;
            match *s {
                Slot::Done(result) => {
                    *s = Slot::Free;
                    free.push(op.slot);
                    op.slot = UNSTARTED;
                    Some(result)
                }
                Slot::Waiting(ref mut task) => {
                    *task = CURRENT.get();
                    None
                }
                Slot::Free | Slot::Orphan { .. } => Some(-ENXIO),
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
    // the slot (`Slot::Orphan`) once the `Op` is dropped.
    while unsafe { ring.submission().push(entry) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

/// Receives into the whole of `buf`.
async fn recv(fd: RawFd, mut buf: Vec<u8>) -> (i32, Vec<u8>) {
    let entry = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build();
    let (result, buf) = Op::new(entry, Some(buf)).await;
    (result, buf.unwrap_or_default())
}

/// Sends the first `len` bytes of `buf`, in as many sends as the socket takes.
async fn send_all(fd: RawFd, mut buf: Vec<u8>, len: usize) -> (bool, Vec<u8>) {
    let mut done = 0;
    while let Some(rest) = buf.get(done..len).filter(|rest| !rest.is_empty()) {
        let entry = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32).build();
        let (result, back) = Op::new(entry, Some(buf)).await;
        buf = back.unwrap_or_default();
        match usize::try_from(result) {
            Ok(n @ 1..) => done += n,
            _ => return (false, buf),
        }
    }
    (done == len, buf)
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
                let slot = completion.user_data() as u32;
                let Some(s) = slots.get_mut(slot as usize) else {
                    continue;
                };
                match *s {
                    Slot::Waiting(task) => {
                        *s = Slot::Done(completion.result());
                        READY.with_borrow_mut(|ready| ready.push_back(task));
                    }
                    // Nothing waits for it: the buffer is dropped here, and the slot freed.
                    Slot::Orphan { .. } => {
                        *s = Slot::Free;
                        free.push(slot);
                    }
                    Slot::Free | Slot::Done(_) => {}
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
    let (mut buf, mut out) = (vec![0; CAPACITY], Vec::with_capacity(CAPACITY));
    let mut heads = Heads::new();
    if mode == Mode::Direct {
        out.extend_from_slice(answer);
    }
    loop {
        let (n, back) = recv(c, buf).await;
        buf = back;
        let Some(n) = usize::try_from(n).ok().filter(|&n| n > 0) else {
            return;
        };
        let Some(up) = upstream.as_ref().map(AsRawFd::as_raw_fd) else {
            let len = out.len();
            let (sent, back) = send_all(c, out, len).await;
            out = back;
            if !sent {
                return;
            }
            continue;
        };
        let sent;
        (sent, buf, out) = pass_on(up, buf, n, out, mode, &mut heads, true).await;
        if !sent {
            return;
        }
        let (n, back) = recv(up, buf).await;
        buf = back;
        let Some(n) = usize::try_from(n).ok().filter(|&n| n > 0) else {
            return;
        };
        let sent;
        (sent, buf, out) = pass_on(c, buf, n, out, mode, &mut heads, false).await;
        if !sent {
            return;
        }
    }
}

/// Sends the `n` bytes just read into `buf` on to `fd`: as they are, or, in `Mode::Codec`,
/// through the codec into `out` first. Whether all of it went, and both buffers back.
async fn pass_on(
    fd: RawFd,
    buf: Vec<u8>,
    n: usize,
    mut out: Vec<u8>,
    mode: Mode,
    heads: &mut Heads,
    from_client: bool,
) -> (bool, Vec<u8>, Vec<u8>) {
    if mode != Mode::Codec {
        let (sent, buf) = send_all(fd, buf, n).await;
        return (sent, buf, out);
    }
    let rewritten = buf
        .get(..n)
        .and_then(|data| heads.rewrite(data, from_client, &mut out));
    if rewritten.is_none() {
        eprintln!("ringgate-floor: a head not whole in one read or refused by the codec");
        return (false, buf, out);
    }
    let len = out.len();
    let (sent, out) = send_all(fd, out, len).await;
    (sent, buf, out)
}
