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

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;

use super::{Discovery, Error, Record};
use crate::config::Target;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    instances: Vec<Record>,
}

/// Edits often land in several writes; wait this long after an event
/// before reading, so a half-written file is read less often.
const SETTLE: Duration = Duration::from_millis(50);

/// Reads the instances in `path`.
fn read(path: &Path) -> Result<Vec<Target>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let instances: Vec<Record> = if path.extension().is_some_and(|e| e == "json") {
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
            inst.target()
                .map_err(|e| format!("{}: instance {i}: {e}", path.display()))
        })
        .collect()
}

/// The `file` back end: the instances in one file, re-read when it changes.
pub struct File {
    path: PathBuf,
    /// File events; the watcher lives as long as this back end.
    events: tokio::sync::mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("path", &self.path).finish_non_exhaustive()
    }
}

impl File {
    /// Watches `path`'s directory, so that an atomic rename onto the file
    /// is seen as well as an edit in place.
    pub fn new(path: &Path) -> Result<Self, Error> {
        // Said plainly before the watcher says it less clearly.
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let _ = tx.send(event);
        })
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        Ok(Self {
            path: path.to_owned(),
            events,
            _watcher: watcher,
        })
    }
}

impl Discovery for File {
    const KIND: &'static str = "file";
    // A bad edit is fixed by the next edit, which the watch waits for: no
    // backoff on top.
    const FIRST_RETRY: Duration = Duration::ZERO;
    const MAX_RETRY: Duration = Duration::ZERO;

    async fn resolve(&mut self) -> Result<Vec<Target>, Error> {
        let targets = read(&self.path)?;
        if targets.is_empty() {
            return Err(Error::Failed(format!("{} lists no instance", self.path.display())));
        }
        Ok(targets)
    }

    async fn watch(&mut self) -> Result<Vec<Target>, Error> {
        let name = self.path.file_name();
        loop {
            let Some(event) = self.events.recv().await else {
                // The watcher is gone; nothing will change any more.
                return std::future::pending().await;
            };
            let touches = match &event {
                Ok(e) => e.paths.iter().any(|p| p.file_name() == name),
                Err(_) => true,
            };
            if touches {
                break;
            }
        }
        tokio::time::sleep(SETTLE).await;
        while self.events.try_recv().is_ok() {}
        self.resolve().await
    }
}
