//! The same relay with no runtime: one io_uring (COOP_TASKRUN + SINGLE_ISSUER, as ringgate's)
//! driven by a plain loop, each connection a four-step state machine and at most one
//! operation in flight per connection. What is left is the kernel's work and a few hundred
//! instructions of ours: the floor under monoio's floor.
//!
//! Sends are taken to complete whole (the messages are a few hundred bytes on loopback); a
//! short one ends the connection and says so on stderr, so that a bound never hides it.
//!
//! [`Mode::Codec`] puts both heads through ringgate's own HTTP codec on the way (`codec.rs`):
//! what that codec costs on a loop with no runtime, the other half of an estimate of an own
//! event loop.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::codec::Heads;

/// What the relay does with a request (the monoio relay knows the first two).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes up and back unchanged.
    Relay,
    /// A fixed answer, no upstream.
    Direct,
    /// Both heads through ringgate's codec.
    Codec,
}

/// `user_data` of the listener's accept; a connection's is `index << 2 | step`.
const ACCEPT: u64 = u64::MAX;
const CAPACITY: usize = 16 * 1024;

/// What the one operation in flight on a connection is.
#[derive(Clone, Copy)]
enum Step {
    RecvClient = 0,
    SendUpstream = 1,
    RecvUpstream = 2,
    SendClient = 3,
}

impl Step {
    fn from_bits(bits: u64) -> Step {
        match bits & 3 {
            0 => Step::RecvClient,
            1 => Step::SendUpstream,
            2 => Step::RecvUpstream,
            _ => Step::SendClient,
        }
    }
}

struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    buf: Vec<u8>,
    /// The length of the send in flight.
    sending: usize,
    /// `Mode::Codec`: the heads as written, and as parsed.
    out: Vec<u8>,
    heads: Heads,
}

/// Serves `listen` in `mode` (`answer` is the direct one) until an error ends the loop.
pub fn run(listen: &str, backend: &str, mode: Mode, answer: &'static [u8]) -> io::Error {
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let Err(e) = serve(listen, backend, mode, answer, &mut conns);
    // Operations still in flight point into the connections' buffers, and closing the ring
    // does not wait for them: the buffers must outlive the process, so they are leaked.
    std::mem::forget(conns);
    e
}

fn serve(
    listen: &str,
    backend: &str,
    mode: Mode,
    answer: &'static [u8],
    conns: &mut Vec<Option<Conn>>,
) -> io::Result<std::convert::Infallible> {
    let listener = TcpListener::bind(listen)?;
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(1024)?;
    let mut completions: Vec<(u64, i32)> = Vec::with_capacity(1024);
    let direct = mode == Mode::Direct;
    let (mut short_sends, mut refused, mut broken) = (0u64, 0u64, 0u64);
    accept(&mut ring, &listener)?;
    loop {
        match ring.submit_and_wait(1) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        completions.clear();
        completions.extend(
            ring.completion()
                .map(|c: cqueue::Entry| (c.user_data(), c.result())),
        );
        for &(token, result) in &completions {
            if token == ACCEPT {
                let opened = match result {
                    // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                    fd @ 0.. => open(
                        conns,
                        unsafe { TcpStream::from_raw_fd(fd as RawFd) },
                        backend,
                        direct,
                    ),
                    errno => Err(io::Error::from_raw_os_error(-errno)),
                };
                match opened {
                    Ok(index) => recv(&mut ring, conns, index, Step::RecvClient)?,
                    // Counted and said, so that a failing relay never reads as a fast one.
                    Err(e) => {
                        refused += 1;
                        eprintln!(
                            "ringgate-floor: a connection not served ({refused} so far): {e}"
                        );
                    }
                }
                accept(&mut ring, &listener)?;
                continue;
            }
            let index = (token >> 2) as usize;
            let step = Step::from_bits(token);
            let Some(conn) = conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let sent_whole = result >= 0 && result as usize == conn.sending;
            if matches!(step, Step::SendUpstream | Step::SendClient) && result > 0 && !sent_whole {
                short_sends += 1;
                eprintln!("ringgate-floor: a short send ended a connection ({short_sends} so far)");
            }
            let next = match step {
                Step::RecvClient | Step::RecvUpstream if result <= 0 => None,
                Step::RecvClient if direct => {
                    Some((Step::SendClient, answer.as_ptr(), answer.len()))
                }
                Step::RecvClient | Step::RecvUpstream => {
                    let n = result as usize;
                    let to = match step {
                        Step::RecvClient => Step::SendUpstream,
                        _ => Step::SendClient,
                    };
                    match mode {
                        Mode::Codec => match conn.buf.get(..n).and_then(|data| {
                            conn.heads.rewrite(
                                data,
                                matches!(step, Step::RecvClient),
                                &mut conn.out,
                            )
                        }) {
                            Some(()) => Some((to, conn.out.as_ptr(), conn.out.len())),
                            None => {
                                broken += 1;
                                eprintln!("ringgate-floor: a head not whole in one read or refused by the codec ({broken} so far)");
                                None
                            }
                        },
                        _ => Some((to, conn.buf.as_ptr(), n)),
                    }
                }
                Step::SendUpstream | Step::SendClient if !sent_whole => None,
                Step::SendUpstream => Some((Step::RecvUpstream, std::ptr::null(), 0)),
                Step::SendClient => Some((Step::RecvClient, std::ptr::null(), 0)),
            };
            match next {
                None => {
                    if let Some(slot) = conns.get_mut(index) {
                        *slot = None;
                    }
                }
                Some((to @ (Step::RecvClient | Step::RecvUpstream), _, _)) => {
                    recv(&mut ring, conns, index, to)?
                }
                Some((to, ptr, len)) => {
                    // A relay's connection always has its upstream; a direct one never sends
                    // upstream.
                    let fd = match (to, &conn.upstream) {
                        (Step::SendUpstream, Some(up)) => up.as_raw_fd(),
                        (Step::SendUpstream, None) => unreachable!("no upstream to send to"),
                        _ => conn.client.as_raw_fd(),
                    };
                    conn.sending = len;
                    // The buffer stays put until the completion: it is the connection's own
                    // (not touched while this send is its one operation) or a static answer.
                    let entry = opcode::Send::new(types::Fd(fd), ptr, len as u32)
                        .build()
                        .user_data((index as u64) << 2 | to as u64);
                    push(&mut ring, entry)?;
                }
            }
        }
    }
}

/// Queues the listener's next accept.
fn accept(ring: &mut IoUring, listener: &TcpListener) -> io::Result<()> {
    let entry = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .build()
    .user_data(ACCEPT);
    push(ring, entry)
}

/// Readies an accepted client (TCP_NODELAY) and, unless `direct`, makes its upstream
/// connection, blocking and at once: set-up is not what is measured. The exec relay's too.
pub fn upstream_for(
    client: &TcpStream,
    backend: &str,
    direct: bool,
) -> io::Result<Option<TcpStream>> {
    client.set_nodelay(true)?;
    if direct {
        return Ok(None);
    }
    let up = TcpStream::connect(backend)?;
    up.set_nodelay(true)?;
    Ok(Some(up))
}

/// Registers an accepted client and its upstream connection (`upstream_for`) in the first
/// free slot.
fn open(
    conns: &mut Vec<Option<Conn>>,
    client: TcpStream,
    backend: &str,
    direct: bool,
) -> io::Result<usize> {
    let upstream = upstream_for(&client, backend, direct)?;
    let conn = Conn {
        client,
        upstream,
        buf: vec![0; CAPACITY],
        sending: 0,
        out: Vec::with_capacity(CAPACITY),
        heads: Heads::new(),
    };
    match conns.iter().position(Option::is_none) {
        Some(free) => {
            if let Some(slot) = conns.get_mut(free) {
                *slot = Some(conn);
            }
            Ok(free)
        }
        None => {
            conns.push(Some(conn));
            Ok(conns.len() - 1)
        }
    }
}

/// Queues a receive into the connection's buffer, from the client or from the upstream.
fn recv(
    ring: &mut IoUring,
    conns: &mut [Option<Conn>],
    index: usize,
    step: Step,
) -> io::Result<()> {
    let Some(conn) = conns.get_mut(index).and_then(Option::as_mut) else {
        return Ok(());
    };
    let fd = match (step, &conn.upstream) {
        (Step::RecvUpstream, Some(up)) => up.as_raw_fd(),
        (Step::RecvUpstream, None) => unreachable!("no upstream to read from"),
        _ => conn.client.as_raw_fd(),
    };
    let entry = opcode::Recv::new(types::Fd(fd), conn.buf.as_mut_ptr(), CAPACITY as u32)
        .build()
        .user_data((index as u64) << 2 | step as u64);
    push(ring, entry)
}

/// Puts one entry on the submission queue, submitting first if it is full.
fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    // SAFETY: every buffer an entry points at outlives its operation: a connection's buffer
    // is freed only on the completion of its one operation, or never (`run`); the answer is
    // static.
    while unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}
