//! sd_notify: tells systemd (a `Type=notify` unit) when the gateway is ready, reloading or
//! stopping, by a datagram to `$NOTIFY_SOCKET`. Without that variable (not under systemd, or a
//! test that does not ask) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where systemd listens, if it does.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> io::Result<Notifier> {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier { socket: None });
        };
        let target = target.to_string_lossy().into_owned();
        let addr = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&target)?,
        };
        Ok(Notifier {
            socket: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// Sends one state update, e.g. `READY=1`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.socket {
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(drop),
            None => Ok(()),
        }
    }

    /// The watchdog interval systemd set for this process (`WATCHDOG_USEC`, and
    /// `WATCHDOG_PID` if given must be ours), when there is somewhere to ping.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        let ours = std::env::var("WATCHDOG_PID").map_or(true, |pid| {
            pid.parse::<u32>().ok() == Some(std::process::id())
        });
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (ours && usec > 0).then(|| Duration::from_micros(usec))
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ asks for.
    pub fn reloading(&self) -> io::Result<()> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for clock_gettime to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }
}
