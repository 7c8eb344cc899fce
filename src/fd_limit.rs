//! The process's open-file limit. Every client connection is a descriptor and a proxied one
//! holds a second for its upstream, so a shell's default soft limit (often 1024) ends at a
//! small fraction of what `server.max_connections` allows: the gateway raises the soft limit
//! to the hard one at start, as HAProxy and Go's runtime do, and says so when even that is
//! short of what the configured connections may need, as nginx does.

use std::io;

/// Descriptors kept aside for listeners, the control socket pairs, the access log, health
/// checks and the runtime's own (io_uring or epoll, eventfd).
const RESERVE: u64 = 64;

/// Where the limit stands after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The soft limit before, when `raise` changed it.
    pub raised_from: Option<u64>,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (to the kernel's `fs.nr_open` when the
/// hard limit is unlimited, since no more can be set).
pub fn raise() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        nr_open().unwrap_or(lim.rlim_cur)
    } else {
        lim.rlim_max
    };
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < target {
        let before = lim.rlim_cur;
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(FdLimit {
            soft: target,
            raised_from: Some(before),
        });
    }
    Ok(FdLimit {
        soft: lim.rlim_cur,
        raised_from: None,
    })
}

/// The descriptors `workers` workers may hold at `max_connections` each: a client and an
/// upstream socket per connection, and the reserve.
pub fn needed(workers: usize, max_connections: usize) -> u64 {
    (workers as u64)
        .saturating_mul(max_connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVE)
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_counts_two_descriptors_per_connection_and_saturates() {
        assert_eq!(needed(2, 16384), 2 * 16384 * 2 + RESERVE);
        assert_eq!(needed(usize::MAX, usize::MAX), u64::MAX);
    }
}
