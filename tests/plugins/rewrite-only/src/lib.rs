//! Exports only the rewrite hook, so using it as a request filter must be
//! refused when the config loads. Its rewrite also tries to edit the
//! headers through the contract's own function, past the SDK's check, and
//! rewrites to `/rewritten` only if the host refuses, as it must in this
//! read-only hook.

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
        use plumeway_sdk::__private::bindings::imports::plumeway::plugin::{headers, types::HeaderError};
        Ok(Some(match headers::set_one("x-rewrite", b"1") {
            Err(HeaderError::Immutable) => "/rewritten".into(),
            other => format!("/the-host-answered-{other:?}"),
        }))
    }
}

plumeway_sdk::export!(RewriteOnly: Rewrite);
