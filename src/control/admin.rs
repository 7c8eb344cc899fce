//! The operator's listener (`[admin] listen`): `/metrics` (Prometheus text format, every
//! worker's counters summed on scrape), `/healthz`, `/readyz` (503 once draining), and
//! `/config` (the running config as JSON), and `POST /reload` (200 with the new generation,
//! or 422 with why the file was refused). A plain
//! blocking thread of the control plane: scrapes are rare, and nothing here touches a worker's
//! request path except the control line each worker answers between requests.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::reload;
use crate::config::UpstreamKind;
use crate::http::{encode, Limits, Method, RequestHead, Status, Version};
use crate::routing::{SharedSnapshot, Snapshot};
use crate::server::Control;
use crate::upstream::state::label_value;

/// What the admin listener reads.
pub struct AdminState {
    pub control: Arc<Control>,
    pub snapshot: Arc<SharedSnapshot>,
    pub workers: usize,
    /// Set when the drain starts: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// The file `POST /reload` re-reads (None: the embedded config).
    pub config_path: Option<std::path::PathBuf>,
}

/// Serves `listener` on a thread of its own until the process exits.
pub fn spawn(listener: TcpListener, state: Arc<AdminState>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &state) {
                            tracing::debug!("admin request failed: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("admin accept failed: {e}"),
                }
            }
        })
        .map(drop)
}

fn serve(mut stream: TcpStream, state: &AdminState) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let limits = Limits::DEFAULT;
    let mut head = RequestHead::new(&limits);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        match head.parse(&buf, &limits) {
            Ok(Status::Complete(_)) => break,
            Ok(Status::Partial) => {}
            Err(e) => return respond(&mut stream, e.status(), b"text/plain", b"bad request\n"),
        }
    }
    let path = head.path.of(&buf);
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    if head.method == Method::Post {
        return match path {
            b"/reload" => match reload::reload(
                state.config_path.as_deref(),
                &state.snapshot,
                &state.control,
            ) {
                Ok(generation) => {
                    let body = format!("reloaded: generation {generation}\n");
                    respond(&mut stream, 200, b"text/plain", body.as_bytes())
                }
                Err(reason) => {
                    let body = format!("reload refused: {reason}\n");
                    respond(&mut stream, 422, b"text/plain", body.as_bytes())
                }
            },
            _ => respond(&mut stream, 404, b"text/plain", b"not found\n"),
        };
    }
    match path {
        b"/metrics" => {
            let text = render(state)?;
            respond(
                &mut stream,
                200,
                b"text/plain; version=0.0.4",
                text.as_bytes(),
            )
        }
        b"/healthz" => respond(&mut stream, 200, b"text/plain", b"ok\n"),
        b"/config" => {
            // No key material reaches this JSON: API-key hashes, JWT secrets and TLS private
            // keys are left out by their Serialize impls (paths and counts only).
            let snapshot = state.snapshot.current();
            let doc = serde_json::json!({
                "generation": snapshot.generation,
                "config": &snapshot.config,
            });
            let mut body = serde_json::to_vec_pretty(&doc).map_err(io::Error::other)?;
            body.push(b'\n');
            respond(&mut stream, 200, b"application/json", &body)
        }
        b"/readyz" if state.draining.load(Ordering::Relaxed) => {
            respond(&mut stream, 503, b"text/plain", b"draining\n")
        }
        b"/readyz" => respond(&mut stream, 200, b"text/plain", b"ready\n"),
        _ => respond(&mut stream, 404, b"text/plain", b"not found\n"),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &[u8],
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 128);
    encode::generated(
        &mut out,
        &encode::Generated {
            status,
            content_type,
            body,
            extra: b"",
            keep_alive: false,
            client_version: Version::Http11,
            head_only: false,
            ready: None,
        },
    );
    stream.write_all(&out)
}

/// HELP text and type of each metric family.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "ringgate_connections_total",
        "counter",
        "Client connections accepted.",
    ),
    (
        "ringgate_connections_refused_total",
        "counter",
        "Connections closed at accept: worker at server.max_connections.",
    ),
    (
        "ringgate_connections_open",
        "gauge",
        "Client connections open now.",
    ),
    (
        "ringgate_requests_total",
        "counter",
        "Requests whose head was admitted.",
    ),
    (
        "ringgate_responses_total",
        "counter",
        "Responses sent, by status class.",
    ),
    (
        "ringgate_upstream_connects_total",
        "counter",
        "New upstream connections.",
    ),
    (
        "ringgate_upstream_reused_total",
        "counter",
        "Requests sent on pooled upstream connections.",
    ),
    (
        "ringgate_upstream_retries_total",
        "counter",
        "Requests retried after a stale pooled connection (outside any retry budget).",
    ),
    (
        "ringgate_retries_total",
        "counter",
        "Attempts retried under an upstream's retry policy, by upstream.",
    ),
    (
        "ringgate_retry_budget_exhausted_total",
        "counter",
        "Retries the retry budget refused, by upstream.",
    ),
    (
        "ringgate_breaker_rejections_total",
        "counter",
        "Requests answered 503 by an upstream's circuit breaker, by upstream and limit.",
    ),
    (
        "ringgate_upstream_requests_in_flight",
        "gauge",
        "Requests in flight to an upstream that has a breaker.",
    ),
    (
        "ringgate_upstream_ejections_total",
        "counter",
        "Outlier ejections of a target (each worker ejects on its own), by upstream and target.",
    ),
    (
        "ringgate_upstream_ejected",
        "gauge",
        "Workers that have a target ejected now, by upstream and target.",
    ),
    (
        "ringgate_errors_total",
        "counter",
        "Rejected or failed exchanges, by reason.",
    ),
    (
        "ringgate_request_duration_seconds",
        "histogram",
        "From a request's head to the end of its response.",
    ),
    (
        "ringgate_cache_entries",
        "gauge",
        "Responses stored in the cache.",
    ),
    ("ringgate_cache_bytes", "gauge", "Bytes the cache holds."),
    (
        "ringgate_cache_hits_total",
        "counter",
        "Requests answered from the cache.",
    ),
    (
        "ringgate_cache_misses_total",
        "counter",
        "Cacheable requests not found in the cache.",
    ),
    (
        "ringgate_cache_evictions_total",
        "counter",
        "Responses evicted to stay within cache.memory.",
    ),
    (
        "ringgate_upstream_errors_total",
        "counter",
        "Failed upstream exchanges (connect, timeout, reset, protocol), by upstream and reason.",
    ),
    (
        "ringgate_route_responses_total",
        "counter",
        "Responses by route (host and path prefix; \"-\" when none matched) and status class.",
    ),
    (
        "ringgate_received_bytes_total",
        "counter",
        "Bytes received from clients.",
    ),
    (
        "ringgate_sent_bytes_total",
        "counter",
        "Bytes sent to clients.",
    ),
    (
        "ringgate_worker_connections_open",
        "gauge",
        "Client connections open now, by worker.",
    ),
    (
        "ringgate_upstream_idle_connections",
        "gauge",
        "Pooled idle upstream connections, by worker.",
    ),
    (
        "ringgate_relay_buffers_lent",
        "gauge",
        "Large receive buffers lent to connections relaying large bodies now, by worker.",
    ),
    (
        "ringgate_relay_buffers_exhausted_total",
        "counter",
        "Large bodies that found every large buffer of the worker lent and were read into the connection's own until one came back, by worker.",
    ),
    (
        "ringgate_rate_limit_keys",
        "gauge",
        "Keys tracked by each rate-limit policy (summed over workers).",
    ),
    (
        "ringgate_rate_limit_evictions_total",
        "counter",
        "Keys evicted to stay within a policy's max_keys.",
    ),
    (
        "ringgate_tls_handshakes_total",
        "counter",
        "TLS handshakes completed, full or resumed from a session ticket.",
    ),
    (
        "ringgate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed, by reason.",
    ),
];

/// p50/p99/p99.9 of the request durations, estimated from the merged histogram as the upper
/// bound of the bucket the quantile falls in.
fn quantiles(out: &mut String, sums: &BTreeMap<String, f64>) {
    // Every worker's HdrHistogram bins, added up by bin (their bounds are the same).
    let mut bins: Vec<(u64, f64)> = sums
        .iter()
        .filter_map(|(name, count)| {
            let micros = name
                .strip_prefix(crate::metrics::HDR_LINE)?
                .strip_suffix("\"}")?;
            Some((micros.parse().ok()?, *count))
        })
        .collect();
    bins.sort_by_key(|(micros, _)| *micros);
    let total: f64 = bins.iter().map(|(_, n)| n).sum();
    out.push_str("# HELP ringgate_request_duration_quantile_seconds Request duration quantiles (HdrHistogram, two significant digits, merged over workers).\n");
    out.push_str("# TYPE ringgate_request_duration_quantile_seconds gauge\n");
    for q in [0.5, 0.99, 0.999] {
        let mut below = 0.0;
        let micros = bins
            .iter()
            .find(|(_, n)| {
                below += n;
                below >= q * total
            })
            .map_or(0, |(micros, _)| *micros);
        out.push_str(&format!(
            "ringgate_request_duration_quantile_seconds{{quantile=\"{q}\"}} {}\n",
            micros as f64 / 1e6
        ));
    }
}

/// The active checks' verdict on each checked target (kept once for the process, not per
/// worker, so it is read here rather than summed).
fn health(out: &mut String, snapshot: &Snapshot) {
    out.push_str(
        "# HELP ringgate_upstream_healthy Active health check verdict: 1 healthy, 0 unhealthy.\n",
    );
    out.push_str("# TYPE ringgate_upstream_healthy gauge\n");
    for (up, shared) in snapshot.config.upstreams.iter().zip(&snapshot.upstreams) {
        let UpstreamKind::Targets(targets) = &up.kind else {
            continue;
        };
        let name = label_value(&up.name);
        for (i, (addr, word)) in targets.iter().zip(&shared.health).enumerate() {
            // A target listed twice is one series (both entries share one word).
            if targets.get(..i).is_some_and(|before| before.contains(addr)) {
                continue;
            }
            out.push_str(&format!(
                "ringgate_upstream_healthy{{upstream=\"{name}\",target=\"{addr}\"}} {}\n",
                u8::from(word.is_healthy())
            ));
        }
    }
}

/// Prometheus text format (version 0.0.4) of the summed worker counters.
fn render(state: &AdminState) -> io::Result<String> {
    let sums: BTreeMap<String, f64> = state.control.metrics()?;
    let mut out = String::new();
    for (family, kind, help) in FAMILIES {
        out.push_str(&format!("# HELP {family} {help}\n# TYPE {family} {kind}\n"));
        for (name, value) in &sums {
            let base = name.split('{').next().unwrap_or_default();
            let member = base == *family
                || (*kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| base.strip_suffix(suffix) == Some(family)));
            if member {
                out.push_str(&format!("{name} {value}\n"));
            }
        }
    }
    quantiles(&mut out, &sums);
    out.push_str("# HELP ringgate_config_generation Generation of the routing snapshot in use.\n");
    out.push_str("# TYPE ringgate_config_generation gauge\n");
    out.push_str(&format!(
        "ringgate_config_generation {}\n",
        state.snapshot.generation()
    ));
    let (ok, failed, last_ok) = reload::outcomes();
    out.push_str(
        "# HELP ringgate_config_reloads_total Reloads tried (SIGHUP, POST /reload), by result.\n",
    );
    out.push_str("# TYPE ringgate_config_reloads_total counter\n");
    out.push_str(&format!(
        "ringgate_config_reloads_total{{result=\"ok\"}} {ok}\nringgate_config_reloads_total{{result=\"failed\"}} {failed}\n"
    ));
    out.push_str("# HELP ringgate_config_last_reload_successful Whether the last reload was applied (1 before any).\n");
    out.push_str("# TYPE ringgate_config_last_reload_successful gauge\n");
    out.push_str(&format!(
        "ringgate_config_last_reload_successful {}\n",
        u8::from(last_ok)
    ));
    health(&mut out, &state.snapshot.current());
    out.push_str("# HELP ringgate_workers Worker threads.\n# TYPE ringgate_workers gauge\n");
    out.push_str(&format!("ringgate_workers {}\n", state.workers));
    Ok(out)
}
