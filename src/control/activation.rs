//! Socket activation (sd_listen_fds): listening sockets handed to us by systemd (a
//! `ringgate.socket` unit) as descriptors 3.. with `LISTEN_FDS`/`LISTEN_PID`. Because the
//! sockets outlive the process, `systemctl restart ringgate` refuses no connection: new ones
//! wait in the kernel's backlog while the old process drains and the new one starts.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;

/// Takes the listening sockets passed to this process, if any, and clears the variables so
/// that nothing we start inherits them.
pub fn take_listeners() -> Vec<TcpListener> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    // SAFETY: called before any other thread exists (see main), so nothing reads the
    // environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !for_us {
        return Vec::new();
    }
    (FIRST_FD..FIRST_FD + count.clamp(0, 1024))
        .filter(|&fd| is_listening_tcp(fd))
        // SAFETY: systemd passed us `fd` to own, and it is a listening TCP socket.
        .map(|fd| unsafe { TcpListener::from_raw_fd(fd) })
        .collect()
}

/// Whether `fd` is a socket that listens (SO_ACCEPTCONN) — anything else is left alone.
fn is_listening_tcp(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for getsockopt to write; a bad fd just fails.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && value == 1
}
