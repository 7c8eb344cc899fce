//! Reloading the config file: read, validate, build and publish a new routing snapshot, off
//! the workers' path. SIGHUP and `POST /reload` both come here; a file that fails keeps the
//! running config.

use std::error::Error as _;
use std::path::Path;

use crate::config;
use crate::routing::SharedSnapshot;

/// Reloads `path` (None: running on the embedded config, nothing to re-read) and returns the
/// new generation, or the reason it was refused (with file, line, column and key).
pub fn reload(path: Option<&Path>, snapshot: &SharedSnapshot) -> Result<u64, String> {
    let Some(path) = path else {
        return Err("running on the embedded config; nothing to re-read".into());
    };
    match config::load(path) {
        Ok(config) => {
            let generation = snapshot.publish(config);
            tracing::info!(config = %path.display(), generation, "reloaded");
            Ok(generation)
        }
        Err(e) => {
            let mut reason = e.to_string();
            if let Some(source) = e.source() {
                reason.push_str(&format!(": {source}"));
            }
            tracing::error!("reload failed, keeping the running config: {reason}");
            Err(reason)
        }
    }
}
