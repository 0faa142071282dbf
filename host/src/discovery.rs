//! Service discovery: where an upstream's endpoints come from when the
//! config does not list them. Each back end resolves the instances once
//! when the config loads (a failure then is a config error), then follows
//! changes and hands every new set to [`Upstream::set_targets`], which keeps
//! what the proxy knows about endpoints that stay and drains the others.
//! A back end that fails later keeps the last good set.

mod dns;
mod file;

use std::path::Path;
use std::sync::Arc;

use crate::config::DiscoveryConfig;
use crate::upstream::Upstream;

/// Resolves `upstream`'s instances now and keeps following them until the
/// upstream is dropped.
pub async fn start(upstream: &Arc<Upstream>, config: &DiscoveryConfig, base_dir: &Path) -> Result<(), String> {
    match config {
        DiscoveryConfig::File { path } => file::start(upstream, &base_dir.join(path)).await,
        DiscoveryConfig::Dns(dns) => dns::start(upstream, dns).await,
    }
}
