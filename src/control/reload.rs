//! Reloading the config file: read, validate, open the listeners it adds (closing those it
//! drops), and publish a new routing snapshot, off the workers' path. SIGHUP and
//! `POST /reload` both come here; a file that fails, or names an address that cannot be
//! bound, keeps the running config.

use std::error::Error as _;
use std::path::Path;

use crate::config;
use crate::routing::SharedSnapshot;
use crate::server::Control;

/// Reloads `path` (None: running on the embedded config, nothing to re-read) and returns the
/// new generation, or the reason it was refused (with file, line, column and key).
pub fn reload(
    path: Option<&Path>,
    snapshot: &SharedSnapshot,
    control: &Control,
) -> Result<u64, String> {
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
