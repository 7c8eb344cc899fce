//! Upstream side of the proxy, per worker: keep-alive connection pools and target choice
//! ([`pool`]), and the in-process `builtin = "echo"` upstream ([`echo`]).

pub mod echo;
pub mod pool;
