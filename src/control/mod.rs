//! The control plane: the operator's admin listener ([`admin`]), service-manager
//! notifications ([`notify`]) and sockets handed over by it ([`activation`]). Nothing here
//! runs on a worker thread.

pub mod activation;
pub mod admin;
pub mod notify;
