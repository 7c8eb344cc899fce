//! Upstream side of the proxy, per worker: keep-alive connection pools ([`pool`]), target
//! choice ([`balance`]), passive and active health ([`health`]), the retry budget
//! ([`budget`]), the live state that ties them to each configured upstream ([`state`]), and
//! the in-process `builtin = "echo"` upstream ([`echo`]).

pub mod balance;
pub mod budget;
pub mod echo;
pub mod health;
pub mod pool;
pub mod state;
