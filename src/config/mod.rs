//! The gateway's configuration: TOML text in, one immutable, fully validated [`Config`] out.
//!
//! `file` mirrors the TOML one to one (serde, unknown keys rejected); `validate` resolves
//! defaults, parses durations, sizes and addresses, and checks what serde cannot (references
//! between sections, duplicate routes). Every rejection names the origin, line, column and key
//! path, so an operator can fix a reload without guessing. This module never touches sockets;
//! besides the config file it reads only the key files that routes' `auth` names (API keys, JWT
//! secrets, public keys, JWKS) and the TLS certificates and keys of `[[server.tls]]`, at load,
//! so that a reload re-reads them. Relative key-file paths
//! are resolved against the config file's directory ([`load`]) or, for text without a file
//! ([`parse`]), against the working directory.
//!
//! The key names are a public contract (see DESIGN.md, "Config contract"): extend, never rename.

mod file;
mod validate;

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::{Auth, IpFilter, RoutePolicy};
use crate::http::Limits;

/// The annotated default configuration, compiled in so that `ringgate run` works without a file.
pub const EMBEDDED: &str = include_str!("../../config/ringgate.toml");

/// The origin that errors in [`EMBEDDED`] are reported against.
pub const EMBEDDED_ORIGIN: &str = "<embedded config/ringgate.toml>";

/// A validated configuration. Building one is the only way to get one: every value in it has
/// passed validation, so the code that consumes it does not re-check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub server: Server,
    pub admin: Option<Admin>,
    pub upstreams: Vec<Upstream>,
    /// In file order; routing precedence does not depend on it (see `routing::RouteTable`).
    pub routes: Vec<Route>,
    /// `[rate_limits.NAME]` policies, in file order; routes refer to them by index.
    pub rate_limits: Vec<RateLimit>,
    /// `[cache]`: present when responses may be cached (routes opt in with `cache`).
    pub cache: Option<CacheSettings>,
    /// `[log]`: the access log.
    pub log: LogSettings,
    /// Access rules per route: `route_policies[i]` belongs to `routes[i]` (kept beside the
    /// routes rather than in them so the route table's input stays plain data).
    pub route_policies: Vec<RoutePolicy>,
}

/// `[log]`: where access log lines go and in which format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSettings {
    pub access: AccessLog,
    pub format: LogFormat,
}

/// `access = "off" | "stdout" | "/path/to/file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AccessLog {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

/// `format = "json" | "combined"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// The Apache/nginx "combined" format.
    Combined,
}

/// `[cache]`: the response cache, split evenly over the workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheSettings {
    /// Bytes for all workers together.
    pub memory: u64,
    /// Larger responses are not stored.
    pub max_object: u64,
    /// Who may send `PURGE`.
    pub purge_allow: Vec<Cidr>,
}

/// An address block such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `[server]`: the listeners and the workers that serve them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    /// One SO_REUSEPORT socket per worker per address; never empty.
    pub listen: Vec<Listen>,
    /// `[[server.tls]]`: the certificates TLS listeners serve, loaded; in file order. Not
    /// empty when a listener has `tls = true`.
    pub tls: Vec<crate::tls::Certificate>,
    pub workers: Workers,
    /// Pin each worker thread to its own core.
    pub pin: bool,
    pub driver: Driver,
    /// How long in-flight requests may run after a shutdown or reload before they are cut.
    pub drain_timeout: Duration,
    /// Open client connections per worker; further connections wait in the accept queue.
    pub max_connections: usize,
    /// A client must send a whole request head within this time (slowloris defence).
    pub header_timeout: Duration,
    /// Idle client keep-alive connections are closed after this time.
    pub keepalive_timeout: Duration,
    /// Request bodies larger than this get 413.
    pub max_body: u64,
    pub limits: Limits,
    /// How the kernel spreads new connections over the workers.
    pub steer: Steer,
    /// `ip_allow` / `ip_deny`: checked for every connection before anything else.
    pub ip: IpFilter,
}

/// One `server.listen` item: `"IP:port"` (plain HTTP) or `{ addr = "IP:port", tls = true }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Listen {
    pub addr: SocketAddr,
    /// Clients must speak TLS here (the certificates come from `[[server.tls]]`).
    pub tls: bool,
}

/// Connection steering across workers. TOML spelling: `"none"`, `"client_ip"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Steer {
    /// The kernel's SO_REUSEPORT hash of the whole 4-tuple.
    None,
    /// A BPF program picks the worker by a hash of the client's address, so every connection
    /// of one client lands on one worker and per-client limits are exact.
    ClientIp,
}

/// `[rate_limits.NAME]`: a token bucket per key, enforced by each worker on its own shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub name: String,
    pub key: LimitKey,
    /// Tokens added per `per`.
    pub rate: u64,
    pub per: Duration,
    /// Requests allowed at once from a full bucket; at least 1.
    pub burst: u64,
    /// Keys one worker tracks; beyond it the least recently used is forgotten.
    pub max_keys: usize,
    /// Also send the RateLimit-* headers on allowed responses.
    pub headers: bool,
}

/// What a rate limit counts by. TOML spelling: `"client_ip"`, `"header:NAME"`, `"route"`,
/// `"client_ip+route"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LimitKey {
    ClientIp,
    /// A request header's value (name lowercase); requests without it share one bucket.
    Header(String),
    Route,
    ClientIpAndRoute,
}

impl LimitKey {
    /// Whether every request with one key arrives on one connection's client address, so that
    /// steering by client address makes the key a single worker's alone.
    pub fn follows_client(&self) -> bool {
        matches!(self, LimitKey::ClientIp | LimitKey::ClientIpAndRoute)
    }
}

/// How many workers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Workers {
    /// One per available core.
    Auto,
    Count(NonZeroUsize),
}

/// Which monoio driver the workers run on. TOML spelling: `"auto"`, `"io_uring"`, `"epoll"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// Probe io_uring at start and fall back to epoll where it is unavailable or forbidden.
    Auto,
    IoUring,
    Epoll,
}

/// `[admin]`: the listener for /metrics, /healthz and /readyz.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// `[upstreams.NAME]`: where proxied requests go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    pub name: String,
    pub kind: UpstreamKind,
    /// `tls = { ca, server_name }`: connections to the targets speak verified TLS.
    pub tls: Option<crate::tls::Connector>,
    pub balance: Balance,
    /// One per target, in `targets` order (`{ addr, weight }`, default 1); only
    /// [`Balance::Weighted`] reads them. Empty for a builtin upstream.
    pub weights: Vec<u32>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an upstream response.
    pub read_timeout: Duration,
    /// Lifetime of an idle pooled connection.
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per target per worker.
    pub max_idle: usize,
    /// Requests sent on one upstream connection before it is retired; at least 1.
    pub max_requests: u32,
    /// `timeout`: the longest a request may take from being forwarded to its response head,
    /// every attempt and every wait for a connection included; then 504.
    pub timeout: Option<Duration>,
    /// `health`: active checks, run once per target by the control plane.
    pub health: Option<HealthCheck>,
    /// `outlier`: passive health, per worker, from the outcomes of real requests.
    pub outlier: Option<OutlierDetection>,
    /// `breaker`: per-worker limits beyond which requests get 503 at once.
    pub breaker: Option<Breaker>,
    /// `retries`: which failed attempts are tried again, and how many.
    pub retries: Option<Retries>,
}

/// `health = { path, interval, timeout, healthy, unhealthy, expect_status }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Requested with GET; starts with '/'.
    pub path: String,
    pub interval: Duration,
    /// For the whole check: connect, request, status line.
    pub timeout: Duration,
    /// Consecutive passed checks that bring an unhealthy target back.
    pub healthy: u32,
    /// Consecutive failed checks that take a healthy target out.
    pub unhealthy: u32,
    pub expect_status: StatusRange,
}

/// `"200-399"` or `"204"`: an inclusive range of status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusRange {
    pub first: u16,
    pub last: u16,
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.first..=self.last).contains(&status)
    }
}

/// `outlier = { consecutive_failures, base_ejection, max_ejection, max_ejected_percent }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Connect failures, resets, timeouts or 5xx in a row that eject a target.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat ejection doubles it.
    pub base_ejection: Duration,
    /// The longest an ejection lasts, however often it repeats.
    pub max_ejection: Duration,
    /// At most this share of an upstream's targets is ejected at once (0..=100).
    pub max_ejected_percent: u32,
}

/// `breaker = { max_connections, max_pending, max_requests }`, per worker; `None` is
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Breaker {
    /// Upstream connections carrying a request at once.
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection while `max_connections` are busy.
    pub max_pending: u32,
    /// Requests in flight to the upstream (waiting or sent).
    pub max_requests: Option<u32>,
}

/// `retries = { attempts, on, budget, min_retries, per_try_timeout }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retries {
    /// Tries in all, the first included; at least 1.
    pub attempts: u32,
    pub on: RetryOn,
    /// Retries allowed per 1000 requests over the budget's window (`"20%"` is 200).
    pub budget_permille: u32,
    /// Retries always allowed in the window, however few requests there were.
    pub min_retries: u32,
    /// One attempt's limit, from connecting to the response head.
    pub per_try_timeout: Option<Duration>,
}

/// Which failures of an attempt are retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    /// `"connect-failure"`: refused or timed-out connects (nothing was sent).
    pub connect_failure: bool,
    /// `"reset"`: the connection closed or failed before a response head.
    pub reset: bool,
    /// `"timeout"`: no response head within `per_try_timeout` (or `read_timeout`).
    pub timeout: bool,
    /// `"502"`, `"503"`, ... or `"5xx"`: the upstream answered with one of these; sorted.
    pub statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum UpstreamKind {
    /// `targets = ["127.0.0.1:9001", ...]`; never empty.
    Targets(Vec<SocketAddr>),
    /// `builtin = "echo"`: answered inside the gateway, no sockets.
    Builtin(Builtin),
}

/// Upstreams implemented inside the gateway. TOML spelling: `"echo"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Answers with the request it received, as JSON.
    Echo,
}

/// How requests are spread over an upstream's targets. TOML spelling: `"round_robin"`,
/// `"weighted"`, `"least_conn"`, `"p2c_ewma"`, `"consistent_hash"` (with `hash_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Balance {
    RoundRobin,
    /// Smooth weighted round robin over the targets' `weight`s.
    Weighted,
    /// The target with the fewest requests in flight from this worker.
    LeastConn,
    /// The better of two random targets by latency (a moving average) × requests in flight.
    P2cEwma,
    /// A Maglev table over the targets, looked up by a hash of the key.
    ConsistentHash(HashKey),
}

/// What `consistent_hash` hashes. TOML spelling: `"client_ip"`, `"header:NAME"`, `"path"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    ClientIp,
    /// A request header's value (name lowercase); requests without it share one key.
    Header(String),
    /// The path, without the query.
    Path,
}

/// `[[routes]]`: which requests a rule applies to and what it does with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub host: HostMatch,
    /// Starts with '/'.
    pub path_prefix: String,
    /// Uppercase; `None` allows every method.
    pub methods: Option<Vec<String>>,
    pub action: Action,
    /// Index into [`Config::rate_limits`].
    pub rate_limit: Option<usize>,
    /// `cache = true` or `cache = { ttl = "60s" }`: responses may be cached; the TTL applies
    /// only to responses that allow caching without giving a lifetime.
    pub cache: Option<RouteCache>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RouteCache {
    pub ttl: Option<Duration>,
}

/// The Host a route applies to, lowercase, without port or trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum HostMatch {
    /// No `host` key: any Host, including none.
    Any,
    Exact(String),
    /// `"*.example.com"` is `Suffix(".example.com")`: any name ending in it, at any depth, but
    /// not `example.com` itself.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    Proxy {
        /// Index into [`Config::upstreams`].
        upstream: usize,
        /// Remove `path_prefix` from the path before forwarding (keeping a leading '/').
        strip_prefix: bool,
        /// Send this Host upstream instead of the client's.
        host_rewrite: Option<String>,
    },
    /// Answer directly, without an upstream.
    Respond {
        status: u16,
        body: String,
        /// In file order; never Content-Length or Transfer-Encoding (framing is the gateway's).
        headers: Vec<(String, String)>,
    },
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `key` is the dotted key path (`routes[1].upstream`); it is empty only for TOML syntax
    /// errors, where no key exists yet, and then it is left out of the message.
    #[error("{origin}:{line}:{column}: {}{message}", KeyPrefix(key))]
    Invalid {
        origin: String,
        /// 1-based.
        line: usize,
        /// 1-based, in characters.
        column: usize,
        key: String,
        message: String,
    },
}

/// Writes `key: ` for a non-empty key, so syntax errors read `file:3:7: message`.
struct KeyPrefix<'a>(&'a str);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

/// Parses and validates `text`; `origin` (a path, or [`EMBEDDED_ORIGIN`]) prefixes every error.
/// Relative key-file paths are taken as they are (against the working directory).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let file = file::File::parse(text, origin)?;
    validate::validate(file, text, origin, None)
}

/// Reads and validates the file at `path`; relative key-file paths in it are resolved against
/// its directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let file = file::File::parse(&text, &origin)?;
    validate::validate(file, &text, &origin, path.parent())
}

impl Config {
    /// A human-readable overview for `ringgate check` and the startup log: listeners, workers,
    /// driver, routes with their targets, upstreams.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        let server = &self.server;
        let listen: Vec<String> = server
            .listen
            .iter()
            .map(|l| match l.tls {
                true => format!("{} (tls)", l.addr),
                false => l.addr.to_string(),
            })
            .collect();
        writeln!(out, "listen:    {}", listen.join(", "))?;
        for (i, cert) in server.tls.iter().enumerate() {
            let names: Vec<String> = cert.server_names.iter().map(|n| n.to_string()).collect();
            let names = if names.is_empty() {
                "(default)".to_string()
            } else {
                names.join(", ")
            };
            writeln!(out, "tls[{i}]:    {} for {names}", cert.cert.display())?;
        }
        let workers = match server.workers {
            Workers::Auto => "auto (one per core)".to_string(),
            Workers::Count(n) => n.to_string(),
        };
        let pin = if server.pin { "pinned" } else { "not pinned" };
        writeln!(out, "workers:   {workers}, {pin}")?;
        let driver = match server.driver {
            Driver::Auto => "auto (io_uring, else epoll)",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        };
        writeln!(out, "driver:    {driver}")?;
        if let Some(admin) = &self.admin {
            writeln!(out, "admin:     {}", admin.listen)?;
        }
        if !server.ip.is_open() {
            writeln!(
                out,
                "ip:        allow {} blocks, deny {} blocks",
                server.ip.allow.blocks().len(),
                server.ip.deny.blocks().len()
            )?;
        }
        writeln!(out, "routes:")?;
        for (i, route) in self.routes.iter().enumerate() {
            let host = match &route.host {
                HostMatch::Any => "(any host)".to_string(),
                HostMatch::Exact(host) => host.clone(),
                HostMatch::Suffix(suffix) => format!("*{suffix}"),
            };
            let methods = match &route.methods {
                Some(methods) => methods.join(","),
                None => "any".to_string(),
            };
            write!(out, "  {host} {} [{methods}] -> ", route.path_prefix)?;
            match &route.action {
                Action::Proxy {
                    upstream,
                    strip_prefix,
                    host_rewrite,
                } => {
                    let name = self
                        .upstreams
                        .get(*upstream)
                        .map_or("?", |u| u.name.as_str());
                    write!(out, "upstream {name}")?;
                    if *strip_prefix {
                        write!(out, " (strip prefix)")?;
                    }
                    if let Some(host) = host_rewrite {
                        write!(out, " (Host: {host})")?;
                    }
                    writeln!(out)?;
                }
                Action::Respond { status, .. } => writeln!(out, "respond {status}")?,
            }
            if let Some(policy) = self.route_policies.get(i).filter(|p| !p.is_empty()) {
                let mut parts: Vec<&str> = Vec::new();
                if !policy.ip.is_open() {
                    parts.push("ip filter");
                }
                if policy.cors.is_some() {
                    parts.push("cors");
                }
                match &policy.auth {
                    Some(Auth::ApiKeys(_)) => parts.push("api keys"),
                    Some(Auth::Jwt(_)) => parts.push("jwt"),
                    None => {}
                }
                if !policy.request_headers.is_empty() {
                    parts.push("request headers");
                }
                if !policy.response_headers.is_empty() {
                    parts.push("response headers");
                }
                writeln!(out, "    access: {}", parts.join(", "))?;
            }
        }
        writeln!(out, "upstreams:")?;
        for upstream in &self.upstreams {
            match &upstream.kind {
                UpstreamKind::Targets(targets) => {
                    let targets: Vec<String> = targets
                        .iter()
                        .zip(&upstream.weights)
                        .map(|(t, w)| match w {
                            1 => t.to_string(),
                            w => format!("{t} (weight {w})"),
                        })
                        .collect();
                    write!(out, "  {}: {}", upstream.name, targets.join(", "))?;
                    let mut notes = vec![match &upstream.balance {
                        Balance::RoundRobin => "round_robin".to_string(),
                        Balance::Weighted => "weighted".to_string(),
                        Balance::LeastConn => "least_conn".to_string(),
                        Balance::P2cEwma => "p2c_ewma".to_string(),
                        Balance::ConsistentHash(key) => format!(
                            "consistent_hash by {}",
                            match key {
                                HashKey::ClientIp => "client_ip".to_string(),
                                HashKey::Header(name) => format!("header {name}"),
                                HashKey::Path => "path".to_string(),
                            }
                        ),
                    }];
                    if let Some(tls) = &upstream.tls {
                        notes.push(match &tls.server_name {
                            Some(name) => format!("tls ({name}, ca {})", tls.ca.display()),
                            None => format!("tls (ca {})", tls.ca.display()),
                        });
                    }
                    if let Some(t) = upstream.timeout {
                        notes.push(format!("timeout {t:?}"));
                    }
                    if let Some(h) = &upstream.health {
                        notes.push(format!("health {} every {:?}", h.path, h.interval));
                    }
                    if upstream.outlier.is_some() {
                        notes.push("outlier detection".into());
                    }
                    if upstream.breaker.is_some() {
                        notes.push("breaker".into());
                    }
                    if let Some(r) = &upstream.retries {
                        notes.push(format!("retries {} attempts", r.attempts));
                    }
                    writeln!(out, " ({})", notes.join("; "))?;
                }
                UpstreamKind::Builtin(Builtin::Echo) => {
                    writeln!(out, "  {}: builtin echo", upstream.name)?;
                }
            }
        }
        Ok(())
    }
}
