//! Exports only the rewrite hook, so using it as a request filter must be
//! refused when the config loads.

use plumeway_sdk::{Config, Error, Plugin, Request, Rewrite};

/// The plugin.
#[derive(Debug)]
pub struct RewriteOnly;

impl Plugin for RewriteOnly {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Self)
    }
}

impl Rewrite for RewriteOnly {
    fn rewrite(&self, _req: &Request<'_>) -> Result<Option<String>, Error> {
        Ok(Some("/rewritten".into()))
    }
}

plumeway_sdk::export!(RewriteOnly: Rewrite);
