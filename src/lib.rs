//! ringgate: an HTTP/1.1 API gateway with one pinned, shared-nothing worker per core.
//!
//! Module map (dependencies point down the list):
//! - [`http`]: the sans-io HTTP/1.1 codec (parse, body framing, encode, limits).

pub mod http;
