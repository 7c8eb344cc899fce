//! The control plane: the operator's admin listener ([`admin`]), config reloads
//! ([`reload`]), service-manager notifications ([`notify`]) and sockets handed over by it
//! ([`activation`]). Nothing here
//! runs on a worker thread.

pub mod activation;
pub mod admin;
pub mod notify;
pub mod reload;
