//! Reloading the config file: read and validate it (re-reading key files and TLS
//! certificates), open the listeners it adds (closing those it drops), and publish a new
//! routing snapshot, off the workers' path. SIGHUP and `POST /reload` both come here; a file
//! that fails, or names an address that cannot be bound, keeps the running config.

use std::error::Error as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config;
use crate::routing::SharedSnapshot;
use crate::server::Control;

static APPLIED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static LAST_APPLIED: AtomicBool = AtomicBool::new(true);

/// Reloads applied and refused so far, and whether the last one was applied (for /metrics).
pub fn outcomes() -> (u64, u64, bool) {
    (
        APPLIED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
        LAST_APPLIED.load(Ordering::Relaxed),
    )
}

/// Reloads `path` (None: running on the embedded config, nothing to re-read) and returns the
/// new generation, or the reason it was refused (with file, line, column and key).
pub fn reload(
    path: Option<&Path>,
    snapshot: &SharedSnapshot,
    control: &Control,
) -> Result<u64, String> {
    let result = apply(path, snapshot, control);
    let counter = if result.is_ok() { &APPLIED } else { &REFUSED };
    counter.fetch_add(1, Ordering::Relaxed);
    LAST_APPLIED.store(result.is_ok(), Ordering::Relaxed);
    result
}

fn apply(path: Option<&Path>, snapshot: &SharedSnapshot, control: &Control) -> Result<u64, String> {
    let Some(path) = path else {
        return Err("running on the embedded config; nothing to re-read".into());
    };
    let loaded = config::load(path).map_err(|e| {
        let mut reason = e.to_string();
        if let Some(source) = e.source() {
            reason.push_str(&format!(": {source}"));
        }
        reason
    });
    let listening = loaded.and_then(|config| {
        control
            .relisten(&config.server.listen)
            .map(|()| config)
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    match listening {
        Ok(config) => {
            let generation = snapshot.publish(config);
            tracing::info!(config = %path.display(), generation, "reloaded");
            Ok(generation)
        }
        Err(reason) => {
            tracing::error!("reload failed, keeping the running config: {reason}");
            Err(reason)
        }
    }
}
