//! The control plane: the operator's admin listener ([`admin`]), config reloads
//! ([`reload`]), service-manager notifications ([`notify`]), sockets handed over by it
//! ([`activation`]) and active health checks of upstream targets ([`health`]). Nothing here
//! runs on a worker thread.

pub mod activation;
pub mod admin;
pub mod health;
pub mod notify;
pub mod reload;
