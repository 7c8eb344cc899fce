//! Per-worker counters: plain `Cell`s, never shared between threads; the control plane sums
//! them when it asks (DESIGN.md principle 1). Every rejection is counted here under its label.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::config::{HostMatch, Route};
use crate::routing::Snapshot;

/// One worker's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Cell<u64>,
    /// Connections closed at accept because the worker was at `server.max_connections`.
    pub connections_refused: Cell<u64>,
    pub requests: Cell<u64>,
    /// Responses by status class: 1xx..5xx at index 1..5.
    pub responses: [Cell<u64>; 6],
    pub upstream_connects: Cell<u64>,
    pub upstream_reused: Cell<u64>,
    pub upstream_retries: Cell<u64>,
    /// Failed exchanges by `Error::label`.
    pub errors: RefCell<BTreeMap<&'static str, u64>>,
    /// Upstream failures by upstream name, then `Error::label`.
    upstream_errors: RefCell<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// Responses by route and status class.
    routes: RefCell<RouteCounts>,
    /// Bytes received from and sent to clients (heads and bodies).
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Request durations: a count per bucket of [`BUCKETS`] (the last is +Inf), and the sum.
    durations: [Cell<u64>; BUCKETS.len() + 1],
    duration_sum_us: Cell<u64>,
    /// The same durations in µs, to two significant digits: the quantiles in `/metrics` come
    /// from these, merged over workers when scraped.
    latency: Latency,
    /// TLS handshakes completed: full, and resumed from a session ticket.
    tls_handshakes: [Cell<u64>; 2],
    /// TLS handshakes that failed, by reason (`tls::session::Failure`).
    tls_failures: RefCell<BTreeMap<&'static str, u64>>,
}

/// An HdrHistogram of request durations in µs (1 µs to an hour, two significant digits, about
/// 25 KiB). Recording is an index computation and an add: no allocation.
#[derive(Debug)]
struct Latency(RefCell<Option<Histogram<u64>>>);

impl Default for Latency {
    fn default() -> Latency {
        Latency(RefCell::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 2).ok(),
        ))
    }
}

/// Responses by route and status class, counted by route index against the snapshot the
/// counts belong to (no lookup per request). When a request from a newer snapshot arrives
/// (a reload), the counts so far are folded under their route labels and counting starts
/// over for the new routes; a request that began on an older snapshot is counted by label.
#[derive(Debug, Default)]
struct RouteCounts {
    #[allow(clippy::redundant_allocation)]
    snapshot: Option<Rc<Arc<Snapshot>>>,
    counts: Vec<[u64; 6]>,
    folded: BTreeMap<String, [u64; 6]>,
    /// Requests no route matched.
    unrouted: [u64; 6],
}

/// A route's label in `/metrics`: its host (`*` for any) and path prefix, e.g.
/// `api.example.com/v1/`.
pub fn route_label(route: &Route) -> String {
    let host = match &route.host {
        HostMatch::Any => "*".to_owned(),
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
    };
    format!("{host}{}", route.path_prefix)
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The prefix of a worker's latency-bin lines: `ringgate_hdr_us{le="MICROS"} COUNT`.
pub const HDR_LINE: &str = "ringgate_hdr_us{le=\"";

/// Upper bounds of the request-duration histogram, in seconds (Prometheus' usual spread,
/// shifted down: a gateway's requests are short).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl RouteCounts {
    /// Folds the counts of the snapshot counted so far, then counts against `snapshot`.
    #[allow(clippy::redundant_allocation)]
    fn rebase(&mut self, snapshot: &Rc<Arc<Snapshot>>) {
        self.fold();
        self.counts = vec![[0; 6]; snapshot.config.routes.len()];
        self.snapshot = Some(Rc::clone(snapshot));
    }

    fn fold(&mut self) {
        let Some(old) = self.snapshot.take() else {
            return;
        };
        for (route, counts) in old.config.routes.iter().zip(self.counts.drain(..)) {
            let folded = self.folded.entry(route_label(route)).or_default();
            for (f, c) in folded.iter_mut().zip(counts) {
                *f += c;
            }
        }
    }

    /// Every label's counts: folded ones plus the current snapshot's.
    fn totals(&self) -> BTreeMap<String, [u64; 6]> {
        let mut totals = self.folded.clone();
        if let Some(snapshot) = &self.snapshot {
            for (route, counts) in snapshot.config.routes.iter().zip(&self.counts) {
                let total = totals.entry(route_label(route)).or_default();
                for (t, c) in total.iter_mut().zip(counts) {
                    *t += c;
                }
            }
        }
        totals.insert("-".to_owned(), self.unrouted);
        totals
    }
}

impl Metrics {
    pub fn add(counter: &Cell<u64>) {
        counter.set(counter.get() + 1);
    }

    pub fn response(&self, status: u16) {
        if let Some(class) = self.responses.get(usize::from(status / 100)) {
            Self::add(class);
        }
    }

    /// One request took `took`, from its head to the end of its response.
    pub fn observe(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(cell) = self.durations.get(bucket) {
            Self::add(cell);
        }
        let us = took.as_micros() as u64;
        self.duration_sum_us.set(self.duration_sum_us.get() + us);
        if let Some(h) = self.latency.0.borrow_mut().as_mut() {
            h.saturating_record(us.max(1));
        }
    }

    pub fn error(&self, label: &'static str) {
        *self.errors.borrow_mut().entry(label).or_default() += 1;
    }

    /// An exchange with `upstream` failed; counted under `errors` too.
    pub fn upstream_error(&self, upstream: &str, label: &'static str) {
        self.error(label);
        let mut by_upstream = self.upstream_errors.borrow_mut();
        // Allocates the name only the first time this upstream fails.
        let labels = match by_upstream.get_mut(upstream) {
            Some(labels) => labels,
            None => by_upstream.entry(upstream.to_owned()).or_default(),
        };
        *labels.entry(label).or_default() += 1;
    }

    /// One request was answered with `status` (0: not answered) on `route` of `snapshot`.
    #[allow(clippy::redundant_allocation)]
    pub fn route_response(&self, snapshot: &Rc<Arc<Snapshot>>, route: Option<usize>, status: u16) {
        let class = usize::from(status / 100);
        if class == 0 || class > 5 {
            return;
        }
        let mut rc = self.routes.borrow_mut();
        let Some(index) = route else {
            rc.unrouted[class] += 1;
            return;
        };
        let current = rc
            .snapshot
            .as_ref()
            .map(|s| (Arc::ptr_eq(s, snapshot), s.generation));
        match current {
            Some((true, _)) => {}
            Some((false, generation)) if snapshot.generation < generation => {
                // Began before a reload the counts have already moved past.
                if let Some(route) = snapshot.config.routes.get(index) {
                    rc.folded.entry(route_label(route)).or_default()[class] += 1;
                }
                return;
            }
            _ => rc.rebase(snapshot),
        }
        if let Some(counts) = rc.counts.get_mut(index) {
            counts[class] += 1;
        }
    }

    /// Adds bytes a client connection received and sent since the last call.
    pub fn bytes(&self, received: u64, sent: u64) {
        self.bytes_in.set(self.bytes_in.get() + received);
        self.bytes_out.set(self.bytes_out.get() + sent);
    }

    /// This worker's counters as `name{labels} value` lines, for the control thread to sum
    /// over workers (see `control::admin`).
    pub fn export(&self, open_connections: usize) -> String {
        let mut out = String::new();
        let mut line = |name: &str, value: u64| out.push_str(&format!("{name} {value}\n"));
        line("ringgate_connections_total", self.connections.get());
        line(
            "ringgate_connections_refused_total",
            self.connections_refused.get(),
        );
        line("ringgate_connections_open", open_connections as u64);
        line("ringgate_requests_total", self.requests.get());
        for class in 1..6 {
            let name = format!("ringgate_responses_total{{class=\"{class}xx\"}}");
            line(&name, self.responses[class].get());
        }
        line(
            "ringgate_upstream_connects_total",
            self.upstream_connects.get(),
        );
        line("ringgate_upstream_reused_total", self.upstream_reused.get());
        line(
            "ringgate_upstream_retries_total",
            self.upstream_retries.get(),
        );
        for (reason, n) in self.errors.borrow().iter() {
            line(&format!("ringgate_errors_total{{reason=\"{reason}\"}}"), *n);
        }
        for (upstream, reasons) in self.upstream_errors.borrow().iter() {
            let upstream = label_value(upstream);
            for (reason, n) in reasons {
                line(
                    &format!("ringgate_upstream_errors_total{{upstream=\"{upstream}\",reason=\"{reason}\"}}"),
                    *n,
                );
            }
        }
        for (route, counts) in self.routes.borrow().totals() {
            let route = label_value(&route);
            for (class, n) in counts.iter().enumerate().skip(1) {
                if *n > 0 {
                    line(
                        &format!("ringgate_route_responses_total{{route=\"{route}\",class=\"{class}xx\"}}"),
                        *n,
                    );
                }
            }
        }
        // The histogram's recorded bins (same bounds in every worker, so the control thread
        // merges them by adding counts per bin); not exported as they are.
        if let Some(h) = self.latency.0.borrow().as_ref() {
            for bin in h.iter_recorded() {
                line(
                    &format!("{HDR_LINE}{}\"}}", bin.value_iterated_to()),
                    bin.count_at_value(),
                );
            }
        }
        line("ringgate_received_bytes_total", self.bytes_in.get());
        line("ringgate_sent_bytes_total", self.bytes_out.get());
        // Cumulative, as Prometheus histograms are.
        let mut below = 0;
        for (i, cell) in self.durations.iter().enumerate() {
            below += cell.get();
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            line(
                &format!("ringgate_request_duration_seconds_bucket{{le=\"{le}\"}}"),
                below,
            );
        }
        line("ringgate_request_duration_seconds_count", below);
        out.push_str(&format!(
            "ringgate_request_duration_seconds_sum {}\n",
            self.duration_sum_us.get() as f64 / 1e6
        ));
        out
    }

    pub fn tls_handshake(&self, resumed: bool) {
        if let Some(counter) = self.tls_handshakes.get(usize::from(resumed)) {
            Self::add(counter);
        }
    }

    pub fn tls_failure(&self, reason: &'static str) {
        *self.tls_failures.borrow_mut().entry(reason).or_default() += 1;
    }

    /// The TLS counters as `name{labels} value` lines (see [`Metrics::export`]).
    pub fn export_tls(&self, out: &mut String) {
        for (kind, cell) in ["full", "resumed"].iter().zip(&self.tls_handshakes) {
            out.push_str(&format!(
                "ringgate_tls_handshakes_total{{kind=\"{kind}\"}} {}\n",
                cell.get()
            ));
        }
        for (reason, n) in self.tls_failures.borrow().iter() {
            out.push_str(&format!(
                "ringgate_tls_handshake_failures_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
    }

    /// One line for the log when the worker stops.
    pub fn summary(&self) -> String {
        let classes: Vec<String> = (1..6)
            .map(|c| format!("{c}xx={}", self.responses[c].get()))
            .collect();
        format!(
            "connections={} refused={} requests={} {} upstream_connects={} upstream_reused={} retries={} errors={:?}",
            self.connections.get(),
            self.connections_refused.get(),
            self.requests.get(),
            classes.join(" "),
            self.upstream_connects.get(),
            self.upstream_reused.get(),
            self.upstream_retries.get(),
            self.errors.borrow()
        )
    }
}
