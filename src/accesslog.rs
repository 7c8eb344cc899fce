//! The access log: one line per exchange, in JSON or the "combined" format, buffered by each
//! worker and written in batches (a write per 64 KiB or per second, never one per request).
//! SIGUSR1 makes every worker reopen its file at its next flush, for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AccessLog, LogFormat, LogSettings};
use crate::http::encode::{decimal, hex_pair};

/// Bumped by the control thread on SIGUSR1; workers compare it when they flush, not per
/// request.
pub static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Lines are written once this much is buffered.
const BATCH: usize = 64 * 1024;

/// What one exchange looked like, for its log line.
pub struct Entry<'a> {
    pub client: &'a [u8],
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub http10: bool,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub route: Option<usize>,
    pub worker: usize,
    /// `HIT`, `MISS` or `-`.
    pub cache: &'static str,
    pub request_id: &'a [u8],
    pub referer: &'a [u8],
    pub user_agent: &'a [u8],
}

/// One worker's access log.
pub struct Writer {
    sink: Sink,
    format: LogFormat,
    buf: Vec<u8>,
    reopened: u64,
    /// The current second and its two renderings, so formatting time costs nothing per line.
    second: u64,
    iso: Vec<u8>,
    clf: Vec<u8>,
}

enum Sink {
    Stdout,
    File {
        path: std::path::PathBuf,
        file: File,
    },
}

impl Writer {
    /// `None` when the access log is off.
    pub fn open(settings: &LogSettings) -> io::Result<Option<Writer>> {
        let sink = match &settings.access {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Sink::Stdout,
            AccessLog::File(path) => Sink::File {
                path: path.clone(),
                file: append(path)?,
            },
        };
        Ok(Some(Writer {
            sink,
            format: settings.format,
            buf: Vec::with_capacity(BATCH + 1024),
            reopened: REOPEN.load(Ordering::Relaxed),
            second: 0,
            iso: Vec::new(),
            clf: Vec::new(),
        }))
    }

    pub fn record(&mut self, e: &Entry<'_>) {
        self.tick();
        match self.format {
            LogFormat::Json => self.json(e),
            LogFormat::Combined => self.combined(e),
        }
        if self.buf.len() >= BATCH {
            self.flush();
        }
    }

    /// Writes what is buffered, then reopens the file if SIGUSR1 asked for it: lines logged
    /// before the reopen belong to the old (rotated) file.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            let written = match &mut self.sink {
                Sink::Stdout => io::stdout().lock().write_all(&self.buf),
                Sink::File { file, .. } => file.write_all(&self.buf),
            };
            if let Err(e) = written {
                tracing::warn!(
                    "access log write failed, {} bytes dropped: {e}",
                    self.buf.len()
                );
            }
            self.buf.clear();
        }
        let wanted = REOPEN.load(Ordering::Relaxed);
        if wanted != self.reopened {
            self.reopened = wanted;
            if let Sink::File { path, file } = &mut self.sink {
                match append(path) {
                    Ok(new) => *file = new,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "access log reopen failed: {e}")
                    }
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != self.second {
            self.second = now;
            let (y, mo, d, h, mi, s) = civil(now);
            self.iso = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z").into_bytes();
            let month = MONTHS.get(mo as usize - 1).copied().unwrap_or("Jan");
            self.clf = format!("{d:02}/{month}/{y:04}:{h:02}:{mi:02}:{s:02} +0000").into_bytes();
        }
    }

    fn json(&mut self, e: &Entry<'_>) {
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"time\":\"");
        b.extend_from_slice(&self.iso);
        b.extend_from_slice(b"\",\"client\":");
        json_str(b, e.client);
        b.extend_from_slice(b",\"method\":");
        json_str(b, e.method);
        b.extend_from_slice(b",\"target\":");
        json_str(b, e.target);
        b.extend_from_slice(b",\"status\":");
        decimal(b, u64::from(e.status));
        b.extend_from_slice(b",\"bytes\":");
        decimal(b, e.bytes);
        b.extend_from_slice(b",\"duration_us\":");
        decimal(b, e.duration.as_micros() as u64);
        b.extend_from_slice(b",\"upstream\":");
        match e.upstream {
            // An address needs no escaping; formatting into the buffer allocates nothing.
            Some(addr) => {
                let _ = write!(b, "\"{addr}\"");
            }
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"upstream_us\":");
        match e.upstream_time {
            Some(t) => decimal(b, t.as_micros() as u64),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"route\":");
        match e.route {
            Some(r) => decimal(b, r as u64),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"worker\":");
        decimal(b, e.worker as u64);
        b.extend_from_slice(b",\"cache\":\"");
        b.extend_from_slice(e.cache.as_bytes());
        b.extend_from_slice(b"\",\"request_id\":");
        json_str(b, e.request_id);
        b.extend_from_slice(b"}\n");
    }

    fn combined(&mut self, e: &Entry<'_>) {
        let b = &mut self.buf;
        b.extend_from_slice(e.client);
        b.extend_from_slice(b" - - [");
        b.extend_from_slice(&self.clf);
        b.extend_from_slice(b"] \"");
        b.extend_from_slice(e.method);
        b.push(b' ');
        b.extend_from_slice(e.target);
        b.extend_from_slice(if e.http10 {
            b" HTTP/1.0\" "
        } else {
            b" HTTP/1.1\" "
        });
        decimal(b, u64::from(e.status));
        b.push(b' ');
        decimal(b, e.bytes);
        for field in [e.referer, e.user_agent] {
            b.extend_from_slice(b" \"");
            if field.is_empty() {
                b.push(b'-');
            }
            for &c in field {
                // Field values are VCHAR, SP, HTAB and obs-text; keep the quotes balanced.
                if c == b'"' || c == b'\\' {
                    b.push(b'\\');
                }
                b.push(c);
            }
            b.push(b'"');
        }
        b.push(b'\n');
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.flush();
    }
}

fn append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A JSON string: quotes, backslashes and control bytes escaped; other bytes as they are
/// (request bytes are ASCII or obs-text; obs-text is escaped to keep the line valid UTF-8).
fn json_str(b: &mut Vec<u8>, s: &[u8]) {
    b.push(b'"');
    for &c in s {
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            0x20..=0x7e => b.push(c),
            _ => {
                b.extend_from_slice(b"\\u00");
                b.extend_from_slice(&hex_pair(c));
            }
        }
    }
    b.push(b'"');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Seconds since the epoch → (year, month, day, hour, minute, second), UTC (H. Hinnant's
/// days-to-civil algorithm).
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_795_396_337), (2026, 11, 23, 1, 12, 17));
    }

    #[test]
    fn json_escapes() {
        let mut b = Vec::new();
        json_str(&mut b, b"a\"b\\c\x01\xff");
        assert_eq!(b, b"\"a\\\"b\\\\c\\u0001\\u00ff\"");
    }
}
