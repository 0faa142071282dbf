//! `discovery = { file = { path = "instances.toml" } }`: instances from a
//! file, watched for changes.
//!
//! ```toml
//! [[instances]]
//! url = "http://10.0.0.5:8080"
//! weight = 2
//! metadata = { zone = "a" }
//! ```
//! or, in a file ending in `.json`, `[{"url": "http://10.0.0.5:8080", "weight": 2}]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;

use crate::config::{Target, TargetUrl};
use crate::upstream::Upstream;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    instances: Vec<Instance>,
}

/// One instance in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Instance {
    url: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    down: bool,
    /// Free-form labels, for humans and (later) filters.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted now so files can carry it; filters will read it")]
    metadata: BTreeMap<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// Edits often land in several writes; wait this long after an event
/// before reading, so a half-written file is read less often.
const SETTLE: Duration = Duration::from_millis(50);

/// Reads the instances in `path`.
fn read(path: &Path) -> Result<Vec<Target>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let instances: Vec<Instance> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        toml::from_str::<TomlFile>(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.message()))?
            .instances
    };
    instances
        .into_iter()
        .enumerate()
        .map(|(i, inst)| {
            let url = TargetUrl::parse(&inst.url).map_err(|e| format!("{}: instance {i}: {e}", path.display()))?;
            if inst.weight == 0 {
                return Err(format!("{}: instance {i}: weight must be at least 1", path.display()));
            }
            Ok(Target {
                url,
                weight: inst.weight,
                down: inst.down,
            })
        })
        .collect()
}

/// Reads the file (an error here fails the config load), then watches its
/// directory, so an atomic rename onto the file is seen as well as an edit.
pub(super) async fn start(upstream: &Arc<Upstream>, path: &Path) -> Result<(), String> {
    let first = read(path)?;
    upstream.set_targets(&first);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let name = path
        .file_name()
        .map(ToOwned::to_owned)
        .ok_or_else(|| format!("{} is not a file", path.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let upstream = Arc::downgrade(upstream);
    let path: PathBuf = path.to_owned();
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        let mut last = first;
        while let Some(event) = rx.recv().await {
            let touches = match &event {
                Ok(e) => e.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())),
                Err(_) => true,
            };
            if !touches {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            let Some(upstream) = upstream.upgrade() else { return };
            match read(&path) {
                Ok(targets) if targets.is_empty() => {
                    tracing::warn!(upstream = &**upstream.name(), file = %path.display(), "instances file lists no instance; keeping the last good set");
                }
                Ok(targets) if targets != last => {
                    upstream.set_targets(&targets);
                    last = targets;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(upstream = &**upstream.name(), error = %err, "instances file rejected; keeping the last good set");
                }
            }
        }
    });
    Ok(())
}
