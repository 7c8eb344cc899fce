//! Which route a request takes: a [`RouteTable`] compiled once per configuration, and the
//! [`SharedSnapshot`] through which the control thread publishes a new one to every worker.
//!
//! A sans-io leaf on the hot path: lookups take bytes, allocate nothing and take no lock; a
//! worker reads the current snapshot through its own [`LocalSnapshot`] cache. Building a table
//! and publishing it happen off the hot path, on reload.

mod snapshot;
mod table;

pub use snapshot::{LocalSnapshot, SharedSnapshot, Snapshot};
pub use table::RouteTable;
