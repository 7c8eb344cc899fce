//! Starting and stopping the gateway: binds one SO_REUSEPORT listener per worker per address,
//! starts one pinned worker thread per core, publishes new routing snapshots, and drains the
//! workers on shutdown. `main` drives it from signals; tests start it on port 0.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, Listen, Steer, Workers};
use crate::control::health;
use crate::fd_limit;
use crate::routing::SharedSnapshot;
use crate::worker::{self, accept, RunningDriver, Worker};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker {worker}: {source}")]
    Worker { worker: usize, source: io::Error },
    #[error("cannot start the health-check thread: {0}")]
    HealthChecks(io::Error),
}

/// Raises the open-file limit for `workers` workers at `max_connections` each, and warns when
/// the limit stays below what they may hold.
fn open_file_limit(workers: usize, max_connections: usize) {
    match fd_limit::raise() {
        Ok(limit) => {
            if let Some(before) = limit.raised_from {
                tracing::info!("open-file limit raised from {before} to {}", limit.soft);
            }
            let needed = fd_limit::needed(workers, max_connections);
            if limit.soft < needed {
                tracing::warn!(
                    limit = limit.soft,
                    needed,
                    "open-file limit below what {workers} worker(s) at server.max_connections \
                     {max_connections} may hold (a client and an upstream socket each): past it \
                     accepts fail (EMFILE) until connections close; raise LimitNOFILE or \
                     `ulimit -n`, or lower server.max_connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// A running gateway.
pub struct Server {
    /// The addresses actually listened on (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    pub drivers: Vec<RunningDriver>,
    snapshot: Arc<SharedSnapshot>,
    control: Arc<Control>,
    done: mpsc::Receiver<usize>,
    threads: Vec<JoinHandle<()>>,
    /// Active health checks; stops when the server is dropped.
    _health: health::Checker,
}

impl Server {
    /// Binds every listener, starts the workers and returns once each of them accepts.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        Server::start_with(config, Vec::new())
    }

    /// As [`Server::start`], serving `inherited` listening sockets (socket activation) for the
    /// addresses they are bound to: every worker accepts on the inherited socket itself, so a
    /// connection waiting in its backlog survives a restart of the gateway.
    pub fn start_with(
        config: Config,
        inherited: Vec<std::net::TcpListener>,
    ) -> Result<Server, ServerError> {
        let workers = match config.server.workers {
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Workers::Count(n) => n.get(),
        };
        let steer = config.server.steer == Steer::ClientIp;
        let configured = config.server.listen.clone();
        let bound: Vec<SocketAddr> = configured.iter().map(|l| l.addr).collect();
        let (addrs, listeners) = bind(&bound, workers, steer, &inherited)?;
        let inherited_addrs: Vec<SocketAddr> = inherited
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        open_file_limit(workers, config.server.max_connections);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let pin = config.server.pin;
        let driver = config.server.driver;
        let max_connections = config.server.max_connections;
        let snapshot = Arc::new(SharedSnapshot::new(config));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<RunningDriver, io::Error>>();
        let (done_tx, done) = mpsc::channel();
        let mut control = Vec::new();
        let mut threads = Vec::new();
        for (id, own) in listeners.into_iter().enumerate() {
            let (ours, theirs) =
                UnixStream::pair().map_err(|source| ServerError::Worker { worker: id, source })?;
            let inbox = Arc::new(Mutex::new(Vec::new()));
            control.push(WorkerLink {
                ctl: ours,
                inbox: Arc::clone(&inbox),
            });
            let local = snapshot.handle();
            let core = cores.get(id % cores.len().max(1)).copied().filter(|_| pin);
            let (ready, done) = (ready_tx.clone(), done_tx.clone());
            let addrs_started: Vec<(SocketAddr, bool)> = addrs
                .iter()
                .zip(&configured)
                .map(|(a, l)| (*a, l.tls))
                .collect();
            let thread = std::thread::Builder::new()
                .name(format!("ringgate-w{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let started = ready.clone();
                    let ran = worker::run(driver, |running| async move {
                        let ready = started;
                        let w = Rc::new(Worker::new(id, workers, running, local));
                        for ((addr, tls), listener) in addrs_started.iter().zip(own) {
                            if let Err(e) = accept::listen(&w, *addr, listener, max_connections, *tls) {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        }
                        if w.log.borrow().is_some() {
                            monoio::spawn(flush_log_every_second(Rc::clone(&w)));
                        }
                        tracing::info!(worker = id, driver = %running, core = ?core.map(|c| c.id), "worker started");
                        let _ = ready.send(Ok(running));
                        control_loop(theirs, &w, &inbox).await;
                        tracing::info!(worker = id, connections = w.drain.connections(), "worker draining");
                        w.drain.start();
                        w.drain.all_closed().await;
                        w.flush_log();
                        tracing::info!(worker = id, "worker stopped: {}", w.metrics.summary());
                    });
                    if let Err(e) = ran {
                        let _ = ready.send(Err(e));
                    }
                    let _ = done.send(id);
                })
                .map_err(|source| ServerError::Worker { worker: id, source })?;
            threads.push(thread);
        }
        let mut drivers = Vec::new();
        for id in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(d)) => drivers.push(d),
                Ok(Err(source)) => return Err(ServerError::Worker { worker: id, source }),
                Err(_) => {
                    let source = io::Error::other("worker exited during start-up");
                    return Err(ServerError::Worker { worker: id, source });
                }
            }
        }
        let listening = configured.into_iter().zip(addrs.iter().copied()).collect();
        let health = health::spawn(Arc::clone(&snapshot)).map_err(ServerError::HealthChecks)?;
        Ok(Server {
            addrs,
            drivers,
            snapshot,
            control: Arc::new(Control {
                state: Mutex::new(ControlState {
                    workers: control,
                    listening,
                    inherited: inherited_addrs,
                    steer,
                }),
            }),
            done,
            threads,
            _health: health,
        })
    }

    /// The line to the workers, for the admin listener.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// The shared routing snapshot: reloads publish to it (listeners and worker count stay
    /// as started).
    pub fn snapshot(&self) -> Arc<SharedSnapshot> {
        Arc::clone(&self.snapshot)
    }

    /// Stops accepting, lets in-flight requests finish and closes idle connections; returns
    /// false if `drain_timeout` passed with connections still open.
    pub fn shutdown(self, drain_timeout: Duration) -> bool {
        self.control.stop();
        let deadline = Instant::now() + drain_timeout;
        let mut stopped = 0;
        while stopped < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(_) => stopped += 1,
                Err(_) => return false,
            }
        }
        for t in self.threads {
            let _ = t.join();
        }
        true
    }
}

/// Lines are written in batches; a quiet worker still writes what it has once a second.
async fn flush_log_every_second(w: Rc<Worker>) {
    while !w.drain.is_draining() {
        monoio::time::sleep(Duration::from_secs(1)).await;
        w.flush_log();
    }
}

/// Serves the control thread on a worker: `m` asks for the worker's counters (answered as a
/// length-prefixed text block), `s` (or the socket's end) stops it.
/// Answers the control thread: `m` → this worker's metrics (length-prefixed text), `l` → apply
/// the listener changes waiting in `inbox`, then `k`; anything else, or a closed socket, stops
/// the worker.
async fn control_loop(ctl: UnixStream, w: &Rc<Worker>, inbox: &Mutex<Vec<ListenerChange>>) {
    // Non-blocking, or on epoll the read after an answered request (readiness is cached as
    // still there) would block the whole worker until the control thread wrote again: every
    // connection of the worker stood still between two scrapes of /metrics.
    if ctl.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut ctl) = monoio::net::UnixStream::from_std(ctl) else {
        return;
    };
    loop {
        let (res, buf) = ctl.read(Vec::with_capacity(1)).await;
        let reply = match (res, buf.first()) {
            (Ok(1), Some(b'm')) => {
                let text = w.export_metrics();
                let mut msg = (text.len() as u32).to_le_bytes().to_vec();
                msg.extend_from_slice(text.as_bytes());
                msg
            }
            (Ok(1), Some(b'l')) => {
                let changes = inbox.lock().map(|mut c| std::mem::take(&mut *c));
                let max_connections = w.snapshot().config.server.max_connections;
                for change in changes.unwrap_or_default() {
                    match change {
                        ListenerChange::Open(addr, listener, tls) => {
                            if let Err(e) = accept::listen(w, addr, listener, max_connections, tls)
                            {
                                tracing::error!(worker = w.id, %addr, "cannot listen: {e}");
                            }
                        }
                        ListenerChange::Close(addr, owned) => accept::unlisten(w, addr, owned),
                        ListenerChange::Tls(addr, tls) => accept::set_tls(w, addr, tls),
                    }
                }
                b"k".to_vec()
            }
            _ => return,
        };
        if ctl.write_all(reply).await.0.is_err() {
            return;
        }
    }
}

/// A listener a reload adds to a worker (the worker's own SO_REUSEPORT socket, and whether it
/// speaks TLS), takes away, or switches between plain and TLS.
enum ListenerChange {
    Open(SocketAddr, std::net::TcpListener, bool),
    /// The address, and whether the socket is ours to shut down (not one systemd handed over).
    Close(SocketAddr, bool),
    Tls(SocketAddr, bool),
}

struct WorkerLink {
    ctl: UnixStream,
    /// Listener changes for the worker to take when it reads `l`.
    inbox: Arc<Mutex<Vec<ListenerChange>>>,
}

struct ControlState {
    workers: Vec<WorkerLink>,
    /// The items of `server.listen` now served, each with the address it resolved to (the
    /// port the kernel chose for port 0).
    listening: Vec<(Listen, SocketAddr)>,
    /// Addresses served on sockets systemd handed over (socket activation): closing one of
    /// ours must not shut those down, systemd keeps them for the next process.
    inherited: Vec<SocketAddr>,
    steer: bool,
}

/// The control thread's line to the workers: metrics on request, listener changes on reload,
/// stop. A mutex is fine here: nothing on a request's path takes it.
pub struct Control {
    state: Mutex<ControlState>,
}

impl Control {
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, ControlState>> {
        self.state.lock().map_err(|_| io::Error::other("poisoned"))
    }

    pub fn metrics(&self) -> io::Result<BTreeMap<String, f64>> {
        let state = self.lock()?;
        let mut sum = BTreeMap::new();
        for link in &state.workers {
            let mut ctl = &link.ctl;
            ctl.set_read_timeout(Some(Duration::from_secs(5)))?;
            ctl.write_all(b"m")?;
            let mut len = [0u8; 4];
            ctl.read_exact(&mut len)?;
            let mut text = vec![0u8; u32::from_le_bytes(len) as usize];
            ctl.read_exact(&mut text)?;
            for line in String::from_utf8_lossy(&text).lines() {
                if let Some((name, value)) = line.rsplit_once(' ') {
                    *sum.entry(name.to_owned()).or_default() += value.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        Ok(sum)
    }

    /// Makes the workers listen on exactly `wanted` (a reloaded `server.listen`): addresses
    /// that are new get one SO_REUSEPORT socket per worker, bound before this returns (so a
    /// config whose address cannot be bound is refused whole); addresses no longer wanted
    /// stop accepting, while their open connections carry on; an address kept with `tls`
    /// switched serves its next connections the new way, on the same sockets. Returns when
    /// every worker has applied the change.
    pub fn relisten(&self, wanted: &[Listen]) -> Result<(), ServerError> {
        let mut state = self
            .lock()
            .map_err(|source| ServerError::Worker { worker: 0, source })?;
        // Each wanted address keeps the listener that serves it: the one bound to exactly that
        // address, or for port 0 one configured as that same port-0 address.
        let mut kept = vec![false; state.listening.len()];
        let mut added: Vec<Listen> = Vec::new();
        let mut switched: Vec<(usize, bool)> = Vec::new();
        for want in wanted {
            let serving =
                state
                    .listening
                    .iter()
                    .enumerate()
                    .position(|(i, (configured, actual))| {
                        let same = if want.addr.port() == 0 {
                            configured.addr == want.addr
                        } else {
                            *actual == want.addr
                        };
                        same && !kept[i]
                    });
            match serving {
                Some(i) => {
                    kept[i] = true;
                    if state
                        .listening
                        .get(i)
                        .is_some_and(|(l, _)| l.tls != want.tls)
                    {
                        switched.push((i, want.tls));
                    }
                }
                None => added.push(*want),
            }
        }
        let removed: Vec<SocketAddr> = state
            .listening
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| !**kept)
            .map(|((_, actual), _)| *actual)
            .collect();
        if added.is_empty() && removed.is_empty() && switched.is_empty() {
            return Ok(());
        }
        let to_bind: Vec<SocketAddr> = added.iter().map(|l| l.addr).collect();
        let (actual, per_worker) = bind(&to_bind, state.workers.len(), state.steer, &[])?;
        let switches: Vec<(SocketAddr, bool)> = switched
            .iter()
            .filter_map(|&(i, tls)| Some((state.listening.get(i)?.1, tls)))
            .collect();
        for (link, sockets) in state.workers.iter().zip(per_worker) {
            let Ok(mut inbox) = link.inbox.lock() else {
                continue;
            };
            inbox.extend(
                actual
                    .iter()
                    .zip(&added)
                    .zip(sockets)
                    .map(|((a, l), socket)| ListenerChange::Open(*a, socket, l.tls)),
            );
            let owned = |a: &SocketAddr| !state.inherited.contains(a);
            inbox.extend(removed.iter().map(|a| ListenerChange::Close(*a, owned(a))));
            inbox.extend(switches.iter().map(|&(a, tls)| ListenerChange::Tls(a, tls)));
        }
        for (i, link) in state.workers.iter().enumerate() {
            apply_listeners(&link.ctl)
                .map_err(|source| ServerError::Worker { worker: i, source })?;
        }
        for &(i, tls) in &switched {
            if let Some((configured, addr)) = state.listening.get_mut(i) {
                configured.tls = tls;
                let now = if tls { "TLS" } else { "plain HTTP" };
                tracing::info!("{addr} now serves {now}");
            }
        }
        let mut still = kept.into_iter();
        state.listening.retain(|_| still.next().unwrap_or(false));
        for (configured, addr) in added.into_iter().zip(actual) {
            tracing::info!("listening on {addr}{}", tls_note(configured.tls));
            state.listening.push((configured, addr));
        }
        for addr in removed {
            tracing::info!("stopped listening on {addr}");
        }
        Ok(())
    }

    fn stop(&self) {
        if let Ok(state) = self.lock() {
            for link in &state.workers {
                let _ = (&link.ctl).write_all(b"s");
            }
        }
    }
}

/// What the "listening on" log line adds for a TLS listener.
pub fn tls_note(tls: bool) -> &'static str {
    if tls {
        " (tls)"
    } else {
        ""
    }
}

/// Tells a worker to take its listener changes and waits until it has.
fn apply_listeners(mut ctl: &UnixStream) -> io::Result<()> {
    ctl.set_read_timeout(Some(Duration::from_secs(5)))?;
    ctl.write_all(b"l")?;
    let mut ack = [0u8; 1];
    ctl.read_exact(&mut ack)
}

type Listeners = (Vec<SocketAddr>, Vec<Vec<std::net::TcpListener>>);

fn bind(
    addrs: &[SocketAddr],
    workers: usize,
    steer: bool,
    inherited: &[std::net::TcpListener],
) -> Result<Listeners, ServerError> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut resolved = Vec::new();
    for &addr in addrs {
        let handed = inherited
            .iter()
            .find(|l| l.local_addr().is_ok_and(|local| local == addr));
        if let Some(socket) = handed {
            for listeners in per_worker.iter_mut() {
                let copy = socket
                    .try_clone()
                    .and_then(|c| c.set_nonblocking(true).map(|()| c))
                    .and_then(|c| socket2::SockRef::from(&c).set_nodelay(true).map(|()| c))
                    .map_err(|source| ServerError::Bind { addr, source })?;
                listeners.push(copy);
            }
            tracing::info!(%addr, "using the inherited listening socket");
            resolved.push(addr);
            continue;
        }
        let mut actual = addr;
        for listeners in per_worker.iter_mut() {
            let socket =
                reuseport_listener(actual).map_err(|source| ServerError::Bind { addr, source })?;
            actual = socket
                .local_addr()
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(socket);
        }
        // The group is complete, and its sockets were indexed in worker order as they joined.
        if steer && workers > 1 {
            if let Some(first) = per_worker.first().and_then(|l| l.last()) {
                steer_by_client(first, addr.is_ipv6(), workers)
                    .map_err(|source| ServerError::Bind { addr, source })?;
            }
        }
        resolved.push(actual);
    }
    Ok((resolved, per_worker))
}

/// Attaches a classic BPF program to the SO_REUSEPORT group of `socket` that picks the worker
/// by a hash of the client's address: every connection from one address lands on one worker.
/// The address is read relative to `SKF_NET_OFF` (the network header): the IPv4 source at
/// +12, the last word of the IPv6 source at +20; multiplying by 2^32/phi and keeping the high
/// half spreads neighbouring addresses.
fn steer_by_client(socket: &std::net::TcpListener, ipv6: bool, workers: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const SKF_NET_OFF: i32 = -0x10_0000;
    const LD_W_ABS: u16 = 0x20;
    const ALU_MUL_K: u16 = 0x24;
    const ALU_RSH_K: u16 = 0x74;
    const ALU_MOD_K: u16 = 0x94;
    const RET_A: u16 = 0x16;
    let source = SKF_NET_OFF + if ipv6 { 20 } else { 12 };
    let op = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        op(LD_W_ABS, source as u32),
        op(ALU_MUL_K, 0x9E37_79B1),
        op(ALU_RSH_K, 16),
        op(ALU_MOD_K, workers as u32),
        op(RET_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Accepted connections inherit it (Linux copies the listener's TCP state into each
    // child): one setsockopt per listener instead of one per connection.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_inherit_nodelay() {
        let listener = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY is per connection again"
        );
    }
}
