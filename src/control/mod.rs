//! The control plane: the operator's admin listener ([`admin`]) and service-manager
//! notifications ([`notify`]). Nothing here runs on a worker thread.

pub mod admin;
pub mod notify;
