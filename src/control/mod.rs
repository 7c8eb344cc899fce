//! The control plane's ties to the host: service-manager notifications ([`notify`]). Nothing
//! here runs on a worker thread.

pub mod notify;
