//! One TLS connection on a monoio socket: the rustls state machine with its ciphertext
//! buffers, driven by owned-buffer reads and writes (as io_uring requires). The session is
//! either side: a client accepted on a TLS listener (server), or a connection to an upstream
//! with `tls` (client). [`Wire`] calls it to move plaintext in and out, the connection task
//! and the upstream connect to shake hands, and [`tunnel`] to relay a TLS client to a plain
//! upstream after a protocol switch (upgrades to a TLS upstream are refused before that).
//!
//! Buffers are allocated once per connection and reused: ciphertext is read into `rx` and
//! handed to rustls, plaintext is copied straight into the caller's receive buffer, and
//! records to send are gathered into `tx` for one write.
//!
//! [`Wire`]: crate::wire::Wire

use std::cell::RefCell;
use std::io::{self, BufRead, Write};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::{Acceptor, Connector};

/// Room for one whole TLS record (16 KiB of payload plus header and AEAD overhead), so one
/// read can complete a record.
const RX_CAPACITY: usize = 16 * 1024 + 512;

/// Why a handshake did not complete: the label of `ringgate_tls_handshake_failures_total`.
pub type Failure = &'static str;

/// Either side of TLS: a client connection accepted on a TLS listener (server session), or
/// a connection to a TLS upstream (client session). The state machine is rustls' either way.
pub struct Session {
    conn: Connection,
    /// Ciphertext read from the socket and not yet given to rustls: `rx[rx_pos..]`.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Records on their way out, gathered for one write; kept for its allocation.
    tx: Vec<u8>,
}

impl Session {
    pub fn new(acceptor: &Acceptor) -> Result<Session, rustls::Error> {
        Ok(Session {
            conn: ServerConnection::new(std::sync::Arc::clone(&acceptor.config))?.into(),
            rx: Vec::with_capacity(RX_CAPACITY),
            rx_pos: 0,
            tx: Vec::new(),
        })
    }

    /// The client side of a connection to a TLS upstream at `target` (whose IP address is
    /// the name verified when the upstream sets no `server_name`).
    pub fn client(
        connector: &Connector,
        target: std::net::SocketAddr,
    ) -> Result<Session, rustls::Error> {
        let name = connector.server_name_for(target);
        Ok(Session {
            conn: ClientConnection::new(std::sync::Arc::clone(&connector.config), name)?.into(),
            rx: Vec::with_capacity(RX_CAPACITY),
            rx_pos: 0,
            tx: Vec::new(),
        })
    }

    /// Whether the handshake resumed an earlier session (a ticket).
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Runs the handshake to its end. Application data the client sent right behind its
    /// last handshake message stays buffered for [`Session::read`].
    pub async fn handshake(&mut self, stream: &mut TcpStream) -> Result<(), Failure> {
        loop {
            if self.conn.wants_write() {
                self.flush(stream).await.map_err(|_| "io")?;
            }
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.rx_pos < self.rx.len() {
                if let Err(e) = self.feed() {
                    // rustls has queued an alert that tells the client why.
                    let _ = self.flush(stream).await;
                    return Err(reason(&e));
                }
                continue;
            }
            match receive(stream, &mut self.rx).await {
                Ok(0) => return Err("closed"),
                Ok(_) => self.rx_pos = 0,
                Err(_) => return Err("io"),
            }
        }
    }

    /// Appends decrypted bytes to `buf`, at most its spare capacity (at least one byte must be
    /// free), reading the socket as needed; `Ok(0)` is the peer closing, with or without
    /// close_notify.
    pub async fn read(&mut self, stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            if let Some(n) = self.take_plaintext(buf)? {
                return Ok(n);
            }
            // A KeyUpdate to answer, or an alert after a failure below.
            if self.conn.wants_write() {
                self.flush(stream).await?;
            }
            if self.rx_pos < self.rx.len() {
                if let Err(e) = self.feed() {
                    let _ = self.flush(stream).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                continue;
            }
            if receive(stream, &mut self.rx).await? == 0 {
                self.eof()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            self.rx_pos = 0;
        }
    }

    /// Encrypts and sends all of `data`. rustls buffers at most 64 KiB of records, so a
    /// large body goes out in slices of that size.
    pub async fn write(&mut self, stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = data.get(n..).unwrap_or_default();
            if n == 0 && !self.conn.wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.flush(stream).await?;
        }
        Ok(())
    }

    /// Sends close_notify (the caller bounds the wait: the client may not be reading).
    pub async fn close(&mut self, stream: &mut TcpStream) {
        self.conn.send_close_notify();
        let _ = self.flush(stream).await;
    }

    /// Moves buffered plaintext into `buf`: `None` when there is none yet.
    fn take_plaintext(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut reader = self.conn.reader();
        let mut moved = 0;
        loop {
            let spare = buf.capacity() - buf.len();
            match reader.fill_buf() {
                Ok([]) => return Ok(Some(moved)),
                Ok(chunk) => {
                    let n = chunk.len().min(spare);
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    reader.consume(n);
                    moved += n;
                    if n == spare {
                        return Ok(Some(moved));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((moved > 0).then_some(moved));
                }
                // The peer closed the TCP connection without close_notify: for HTTP that is
                // a close like any other (a truncated body is caught by its framing).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(moved)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands rustls the next ciphertext from `rx` and processes it.
    fn feed(&mut self) -> Result<(), rustls::Error> {
        let mut input = self.rx.get(self.rx_pos..).unwrap_or_default();
        let n = self
            .conn
            .read_tls(&mut input)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.rx_pos += n;
        if self.rx_pos >= self.rx.len() {
            self.rx.clear();
            self.rx_pos = 0;
        }
        self.conn.process_new_packets().map(drop)
    }

    /// Tells rustls the socket reached its end.
    fn eof(&mut self) -> Result<(), rustls::Error> {
        let _ = self.conn.read_tls(&mut io::empty());
        self.conn.process_new_packets().map(drop)
    }

    /// Gathers every pending record into `tx` and writes it (None: nothing pending).
    fn gather(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.conn.wants_write() {
            return Ok(None);
        }
        let mut tx = std::mem::take(&mut self.tx);
        tx.clear();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut tx)?;
        }
        Ok(Some(tx))
    }

    async fn flush<W: AsyncWriteRent>(&mut self, stream: &mut W) -> io::Result<()> {
        while let Some(tx) = self.gather()? {
            let (res, tx) = stream.write_all(tx).await;
            self.tx = tx;
            res?;
        }
        Ok(())
    }
}

/// Reads ciphertext into the empty `rx`.
async fn receive<R: AsyncReadRent>(stream: &mut R, rx: &mut Vec<u8>) -> io::Result<usize> {
    rx.clear();
    // A read cancelled by a timeout takes the buffer with it; the caller then gives up the
    // connection, but a zero-capacity read would look like the end of the stream.
    if rx.capacity() == 0 {
        rx.reserve(RX_CAPACITY);
    }
    let (res, buf) = stream.read(std::mem::take(rx)).await;
    *rx = buf;
    res
}

/// The label for a rustls error during the handshake.
fn reason(e: &rustls::Error) -> Failure {
    use rustls::Error;
    match e {
        // Not TLS at all (a plain HTTP request, a scanner), or a malformed record.
        Error::InvalidMessage(_) => "bad_message",
        // No protocol version, suite, group or signature scheme in common (a TLS 1.1 client).
        Error::PeerIncompatible(_) => "incompatible",
        Error::NoApplicationProtocol => "alpn",
        // The client refused us, typically our certificate (unknown CA, wrong name).
        Error::AlertReceived(_) => "alert_received",
        Error::PeerMisbehaved(_) => "misbehaved",
        Error::DecryptError => "decrypt",
        // The peer's certificate did not verify (only a client session verifies one).
        Error::InvalidCertificate(e) => certificate_reason(e),
        _ => "other",
    }
}

fn certificate_reason(e: &rustls::CertificateError) -> Failure {
    use rustls::CertificateError;
    match e {
        CertificateError::UnknownIssuer => "unknown_issuer",
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "name_mismatch"
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => "expired",
        _ => "bad_certificate",
    }
}

/// Relays a TLS client and a plain upstream both ways until each side has closed its half
/// (WebSocket after a 101). `client_pending` and `upstream_pending` are plaintext already
/// received; more may wait inside the session.
///
/// rustls cannot be split in two, so both directions share it through a `RefCell`, borrowed
/// only between awaits. Only the upstream-to-client direction writes to the client: anything
/// rustls queues while the other direction reads (a KeyUpdate answer) goes out before the
/// next record, as TLS 1.3 requires.
pub async fn tunnel(
    session: Box<Session>,
    client: TcpStream,
    client_pending: Vec<u8>,
    upstream: TcpStream,
    upstream_pending: Vec<u8>,
) {
    use monoio::io::Splitable;
    let session = RefCell::new(session);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    let up = async {
        let mut plain = client_pending;
        loop {
            if !plain.is_empty() {
                let (res, buf) = upstream_tx.write_all(plain).await;
                plain = buf;
                if res.is_err() {
                    return;
                }
            }
            plain.clear();
            if plain.capacity() == 0 {
                plain.reserve(RX_CAPACITY);
            }
            let step = {
                let mut s = session.borrow_mut();
                match s.take_plaintext(&mut plain) {
                    Ok(Some(0)) | Err(_) => Step::Done,
                    Ok(Some(_)) => Step::Again,
                    Ok(None) if s.rx_pos < s.rx.len() => match s.feed() {
                        Ok(()) => Step::Again,
                        Err(_) => Step::Done,
                    },
                    Ok(None) => Step::Read(std::mem::take(&mut s.rx)),
                }
            };
            match step {
                Step::Again => {}
                Step::Done => break,
                Step::Read(mut rx) => {
                    let got = receive(&mut client_rx, &mut rx).await;
                    let mut s = session.borrow_mut();
                    s.rx = rx;
                    s.rx_pos = 0;
                    match got {
                        Ok(0) => {
                            if s.eof().is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        let _ = upstream_tx.shutdown().await;
    };
    let down = async {
        let mut buf = upstream_pending;
        loop {
            if !buf.is_empty() && send_shared(&session, &mut client_tx, &buf).await.is_err() {
                return;
            }
            buf.clear();
            if buf.capacity() == 0 {
                buf.reserve(RX_CAPACITY);
            }
            let (res, b) = upstream_rx.read(buf).await;
            buf = b;
            if !matches!(res, Ok(1..)) {
                break;
            }
        }
        session.borrow_mut().conn.send_close_notify();
        if flush_shared(&session, &mut client_tx).await.is_ok() {
            let _ = client_tx.shutdown().await;
        }
    };
    monoio::join!(up, down);
}

/// What the client-to-upstream direction does next.
enum Step {
    /// Plaintext is ready (or rustls has more to process): go round again.
    Again,
    Done,
    /// Read the client into this buffer (taken out of the session meanwhile).
    Read(Vec<u8>),
}

async fn send_shared<W: AsyncWriteRent>(
    session: &RefCell<Box<Session>>,
    stream: &mut W,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        let n = session.borrow_mut().conn.writer().write(data)?;
        data = data.get(n..).unwrap_or_default();
        flush_shared(session, stream).await?;
        if n == 0 && !data.is_empty() && !session.borrow().conn.wants_write() {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

async fn flush_shared<W: AsyncWriteRent>(
    session: &RefCell<Box<Session>>,
    stream: &mut W,
) -> io::Result<()> {
    loop {
        let Some(tx) = session.borrow_mut().gather()? else {
            return Ok(());
        };
        let (res, tx) = stream.write_all(tx).await;
        session.borrow_mut().tx = tx;
        res?;
    }
}
