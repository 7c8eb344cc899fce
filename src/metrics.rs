//! Per-worker counters: plain `Cell`s, never shared between threads; the control plane sums
//! them when it asks (DESIGN.md principle 1). Every rejection is counted here under its label.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

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
    /// Request durations: a count per bucket of [`BUCKETS`] (the last is +Inf), and the sum.
    durations: [Cell<u64>; BUCKETS.len() + 1],
    duration_sum_us: Cell<u64>,
}

/// Upper bounds of the request-duration histogram, in seconds (Prometheus' usual spread,
/// shifted down: a gateway's requests are short).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
        let us = self.duration_sum_us.get() + took.as_micros() as u64;
        self.duration_sum_us.set(us);
    }

    pub fn error(&self, label: &'static str) {
        *self.errors.borrow_mut().entry(label).or_default() += 1;
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
