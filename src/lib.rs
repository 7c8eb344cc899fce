//! ringgate: an HTTP/1.1 API gateway with one pinned, shared-nothing worker per core.
//!
//! Module map; dependencies point one way (`server → worker → proxy → {routing, upstream,
//! http}`, everything → `error`), and the leaves (`http`, `config`, `routing`) never import
//! monoio. The hot path starts at [`worker::conn::serve`].
//!
//! - [`http`]: the sans-io HTTP/1.1 codec (parse, body framing, encode, limits);
//! - [`access`]: IP filters, CORS, API keys, JWT and header edits: per-route access decisions;
//! - [`config`]: TOML file → validated, typed [`config::Config`];
//! - [`routing`]: the immutable route table and the lock-free snapshot workers read;
//! - [`ratelimit`]: a worker's token-bucket shard of a rate-limit policy;
//! - [`cache`]: a worker's response-cache shard (RFC 9111, byte-bounded, S3-FIFO);
//! - [`upstream`]: per-worker pools, target choice, the built-in echo upstream;
//! - [`proxy`]: the request pipeline; [`wire`]: a socket and its buffer; [`deadline`]: a
//!   connection's read timers, moved lazily;
//! - [`tls`]: certificates, SNI and the rustls config; a connection's TLS session;
//! - [`worker`]: one runtime per core, accept loops, connections, drain;
//! - [`server`]: binding, starting and stopping workers; [`fd_limit`]: the open-file limit;
//!   [`control`]: sd_notify;
//! - [`error`], [`metrics`], [`accesslog`]: failure classes, per-worker counters, the
//!   access log.

pub mod access;
pub mod accesslog;
pub mod buffers;
pub mod cache;
pub mod config;
pub mod control;
pub mod deadline;
pub mod error;
pub mod fd_limit;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod routing;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod wire;
pub mod worker;
